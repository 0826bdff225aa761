"""Microsoft identity platform emulator (device-code sign-in, refresh tokens with rotation) with Key Vault secrets."""

from .emulator import IdentityEmulator

__all__ = ["IdentityEmulator"]
