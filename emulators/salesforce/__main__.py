"""``python -m emulators.salesforce [--port N] [--host H]``: the emulator on its own, until interrupted."""

from .._server import main
from .emulator import SalesforceEmulator

if __name__ == "__main__":
    main(SalesforceEmulator, 7103)
