"""``python -m devtools.bench [--records N] [--workers N]``; see :mod:`devtools.bench.run`."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
