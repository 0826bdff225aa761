"""``python -m devtools.bench [--records N] [--crm dynamics|salesforce] [--latency-ms MS]``: :mod:`devtools.bench`."""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
