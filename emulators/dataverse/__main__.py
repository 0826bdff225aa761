"""``python -m emulators.dataverse [--port N] [--host H]``: the emulator on its own, until interrupted."""

from .._server import main
from .emulator import DataverseEmulator

if __name__ == "__main__":
    main(DataverseEmulator, 7102)
