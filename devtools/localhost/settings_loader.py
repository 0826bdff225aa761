"""App settings for local runs: the environment first, then ``local.settings.json``.

Mirrors what Core Tools does with the file (``Values`` become environment variables, a variable
already set wins), plus one local convention: an empty value in the file counts as unset, so the
sample file can list every setting while the stack still fills endpoints with emulators.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SETTINGS_FILE = "local.settings.json"
_EXPRESSION = re.compile(r"%([^%]+)%")


class LocalSettingsError(ValueError):
    """local.settings.json is unreadable or a binding names a setting that is not set."""


def read_settings_file(path: Path) -> dict[str, Any]:
    """The parsed file, or an empty shape when it does not exist (a fresh clone has none)."""
    if not path.exists():
        return {"IsEncrypted": False, "Values": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise LocalSettingsError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Values", {}), dict):
        raise LocalSettingsError(f"{path} must be an object with a 'Values' object")
    if data.get("IsEncrypted"):
        # Core Tools encrypts with a machine key we cannot read; failing beats running half-configured.
        raise LocalSettingsError(f"{path} is encrypted; decrypt it with 'func settings decrypt' first")
    return data


def merge_settings(environ: Mapping[str, str], path: Path) -> dict[str, str]:
    """Environment wins over the file; empty file values are left out (treated as unset)."""
    values = read_settings_file(path).get("Values", {})
    merged = {str(k): str(v) for k, v in values.items() if v is not None and str(v) != ""}
    merged.update(environ)
    return merged


def local_http_port(path: Path, default: int = 7071) -> int:
    host = read_settings_file(path).get("Host") or {}
    try:
        return int(host.get("LocalHttpPort", default))
    except (TypeError, ValueError):
        return default


def resolve(value: str, settings: Mapping[str, str]) -> str:
    """Replace ``%NAME%`` with the app setting NAME, as the host does for binding properties."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in settings or settings[name] == "":
            raise LocalSettingsError(f"the binding expression '%{name}%' names an app setting that is not set")
        return settings[name]

    return _EXPRESSION.sub(lookup, value)


def referenced_settings(value: str) -> list[str]:
    return _EXPRESSION.findall(value)
