"""Where ``python -m shared login`` keeps the Partner Center refresh token when no Key Vault is given.

The token lives in the operator's per-user configuration directory (``$XDG_CONFIG_HOME`` or
``~/.config/cosell-connector`` on Linux, ``%APPDATA%\\cosell-connector`` on Windows, the Application Support
folder on macOS), never in the working directory: a checkout is where git and the release packager would
pick it up. The directory is private to the user (0700) and the file is born private (0600).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from platformdirs import user_config_path

log = logging.getLogger(__name__)

APP_DIR_NAME = "cosell-connector"
FILE_NAME = "refresh-token.txt"


def default_token_path() -> Path:
    return user_config_path(APP_DIR_NAME, appauthor=False, roaming=True) / FILE_NAME


def write_token_file(token: str, path: Path | None = None) -> Path:
    """Store the token at ``path`` (default: :func:`default_token_path`) and return where it went."""
    target = path or default_token_path()
    folder = target.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path is None:
        # Our own directory: tighten it even if an earlier version or a user created it more open.
        folder.chmod(0o700)
    # mkstemp creates the file with 0600 and O_EXCL, so the token is never readable by others, not even
    # for a moment; the rename then replaces any older file (and its permissions) in one step.
    handle, temporary = tempfile.mkstemp(prefix=".refresh-token-", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(token)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def keep_rotated_token(path: Path) -> Callable[[str], None]:
    """Write each rotated refresh token back to the file it came from; a failed write is logged, never raised,
    since the exchange it follows has worked (the token in the file stays usable until it expires)."""

    def keep(token: str) -> None:
        try:
            write_token_file(token, path)
        except OSError as exc:
            log.warning("the rotated refresh token was not written to %s (%s)", path, type(exc).__name__)

    return keep


def read_token_file(path: Path) -> str | None:
    """The token stored at ``path``, or None when there is no such file or it is empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return token or None


def warn_about_stray_token_file(chosen: Path | None = None) -> Path | None:
    """Warn when an older login left the token in the working directory; return that file, if any.

    The file is never read from there: an operator who relied on it must move it (or store the token in Key
    Vault) on purpose. ``chosen`` is a file the operator named explicitly, which is not stray."""
    try:
        stray = Path.cwd() / FILE_NAME
        if not stray.is_file():
            return None
        if stray.resolve() in {default_token_path().resolve(), *([chosen.resolve()] if chosen else [])}:
            return None
    except OSError:
        return None  # no working directory to speak of (it was deleted): nothing can be stray there
    log.warning(
        "A Partner Center refresh token file %s is in the working directory, where git and the release zip can "
        "pick it up. It is not used: move it to %s (or store the token in Key Vault) and delete it.",
        stray,
        default_token_path(),
    )
    return stray
