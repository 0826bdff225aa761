import sys

from devtools.chaos.run import main

sys.exit(main())
