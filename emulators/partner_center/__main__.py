"""``python -m emulators.partner_center [--port N] [--host H]``: the emulator on its own, until interrupted."""

from .._server import main
from .emulator import DEFAULT_PORT, PartnerCenterEmulator

if __name__ == "__main__":
    main(PartnerCenterEmulator, DEFAULT_PORT)
