"""Removes secrets from text that telemetry carries (failure reasons).

Error messages of this app name paths, never tokens; this is the second line of defence for text that
comes from elsewhere (an SDK's exception, a service's error body echoing what it was sent)."""

from __future__ import annotations

import re

REDACTED = "[redacted]"
_RULES = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    (
        re.compile(r"(?i)\b(AccountKey|SharedAccessKey|SharedAccessSignature|InstrumentationKey|sig)=[^;&\s]+"),
        rf"\1={REDACTED}",
    ),
    (re.compile(r"(?i)\b(client_secret|refresh_token|access_token|assertion|password)=[^&\s]+"), rf"\1={REDACTED}"),
    (
        re.compile(r"(?i)(\"(?:access_token|refresh_token|client_secret|id_token)\"\s*:\s*)\"[^\"]*\""),
        rf'\1"{REDACTED}"',
    ),
)


def redact(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
