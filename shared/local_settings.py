"""``local.settings.json`` for operator commands, read as ``make run`` reads it.

Its ``Values`` become environment variables for this process; a variable already set wins, and an empty value
counts as unset (the sample lists every setting, most of them empty). An encrypted file is refused: Core Tools
encrypts with a machine key this process cannot read.
"""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from pathlib import Path

SETTINGS_FILE = "local.settings.json"


class LocalSettingsError(ValueError):
    """The file cannot be used; the message names it and says why (never a value from it)."""


def apply_local_settings(path: Path, environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Set each non-empty ``Values`` entry of ``path`` not already in ``environ``; the names set. A missing
    file sets nothing."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LocalSettingsError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalSettingsError(f"{path} cannot be read: {type(exc).__name__}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Values", {}), dict):
        raise LocalSettingsError(f"{path} must be an object with a 'Values' object")
    if data.get("IsEncrypted"):
        raise LocalSettingsError(f"{path} is encrypted; decrypt it with 'func settings decrypt' first")
    present = {name.upper() for name in environ}
    applied = []
    for name, value in data.get("Values", {}).items():
        if value is None or str(value) == "" or str(name).upper() in present:
            continue
        environ[str(name)] = str(value)
        applied.append(str(name))
    return applied
