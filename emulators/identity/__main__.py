"""``python -m emulators.identity [--port N] [--host H]``: the emulator on its own, until interrupted."""

from .._server import main
from .emulator import IdentityEmulator

if __name__ == "__main__":
    main(IdentityEmulator, 7104)
