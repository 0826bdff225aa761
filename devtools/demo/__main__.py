"""``python -m devtools.demo [--crm dynamics|salesforce] [--timeout SECONDS]``; see :mod:`devtools.demo.run`."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
