"""The ``crm`` part of GET /api/status: which mapped columns the CRM org lacks (see :mod:`shared.crm.org_columns`).

The adapter learns the org's columns once per process (one metadata request), so asking here costs at most that
request, and nothing once a job has read or written. A column the connector cannot work without is reported with
the command that adds it, as the jobs report it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..crm.org_columns import SETUP_COMMAND, OrgColumns, RequiredColumnsMissing
from ..domain.errors import ExternalServiceError
from ..settings import SettingsError

if TYPE_CHECKING:
    from ..wiring import Container


def crm_columns(c: Container) -> dict[str, Any]:
    try:
        learn = getattr(c.crm, "org_columns", None)
        columns: OrgColumns | None = learn() if learn is not None else None
    except RequiredColumnsMissing as exc:
        columns = exc.columns
    except (ExternalServiceError, SettingsError, ValueError) as exc:
        # The CRM cannot be asked now (down, refused, not configured): say so; the jobs report the same.
        return {"columnsNotInOrg": None, "requiredColumnsNotInOrg": None, "problem": f"not checked: {exc}"}
    if columns is None:
        return {"columnsNotInOrg": [], "requiredColumnsNotInOrg": [], "problem": None}
    return {**columns.status(), "fix": SETUP_COMMAND if columns.optional or columns.required else None}
