"""Write rules of the emulated Referrals API: JSON Patch (replace/add only) and status transitions."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

# Fields the service owns: a client may not set them through PUT or PATCH.
READ_ONLY_FIELDS = frozenset(
    {
        "id",
        "engagementId",
        "eTag",
        "createdDateTime",
        "updatedDateTime",
        "acceptedDateTime",
        "closedDateTime",
        "organizationId",
        "organizationName",
        "direction",
        "links",
    }
)

NEXT_STATUSES: dict[str, frozenset[str]] = {
    "New": frozenset({"New", "Active", "Closed"}),
    "Active": frozenset({"Active", "Closed"}),
    "Closed": frozenset({"Closed"}),
}
SUBSTATUSES: dict[str, frozenset[str]] = {
    "New": frozenset({"Pending", "Received"}),
    "Active": frozenset({"Accepted"}),
    "Closed": frozenset({"Won", "Lost", "Declined", "Expired"}),
}
PATCH_OPS = frozenset({"replace", "add"})


class RuleViolation(ValueError):
    """The request breaks a documented rule; answered with 400 invalidRequest."""


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or not path.startswith("/") or path == "/":
        raise RuleViolation(f"'{path}' is not a JSON Pointer to a referral field")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _container_for(document: dict[str, Any], tokens: list[str]) -> Any:
    node: Any = document
    for index, token in enumerate(tokens):
        if isinstance(node, list):
            if not token.isdigit() or int(token) >= len(node):
                raise RuleViolation(f"array index '{token}' does not exist")
            node = node[int(token)]
        elif isinstance(node, dict):
            # The service accepts a patch into an object the referral does not have yet.
            if node.get(token) is None:
                following = tokens[index + 1] if index + 1 < len(tokens) else ""
                node[token] = [] if following == "-" or following.isdigit() else {}
            node = node[token]
        else:
            raise RuleViolation(f"'{token}' is not inside an object or array")
    return node


def _apply_one(document: dict[str, Any], operation: Any) -> None:
    if not isinstance(operation, dict):
        raise RuleViolation("each JSON Patch operation must be an object")
    op = operation.get("op")
    if op not in PATCH_OPS:
        raise RuleViolation(f"JSON Patch operation '{op}' is not supported; use replace or add")
    if "value" not in operation:
        raise RuleViolation(f"JSON Patch '{op}' needs a value")
    tokens = _pointer(operation.get("path"))
    if tokens[0] in READ_ONLY_FIELDS:
        raise RuleViolation(f"'{tokens[0]}' is read-only")
    parent = _container_for(document, tokens[:-1])
    last, value = tokens[-1], copy.deepcopy(operation["value"])
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            if op != "add":
                raise RuleViolation("'-' may only be used with add")
            parent.append(value)
        elif last.isdigit() and op == "add" and int(last) <= len(parent):
            parent.insert(int(last), value)
        elif last.isdigit() and op == "replace" and int(last) < len(parent):
            parent[int(last)] = value
        else:
            raise RuleViolation(f"array index '{last}' does not exist")
    else:
        raise RuleViolation(f"'{operation.get('path')}' does not point into an object or array")


def apply_patch(document: dict[str, Any], operations: Any) -> dict[str, Any]:
    """A patched deep copy of ``document``; the original is untouched when a rule is broken."""
    if not isinstance(operations, list) or not operations:
        raise RuleViolation("the body must be a non-empty JSON Patch array")
    patched = copy.deepcopy(document)
    for operation in operations:
        _apply_one(patched, operation)
    return patched


def check_transition(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Enforce the documented status/substatus table for a write from ``before`` to ``after``."""
    old_status = before.get("status")
    if old_status == "Closed":
        raise RuleViolation("the referral is closed; no further updates are possible")
    new_status, new_substatus = after.get("status"), after.get("substatus")
    if (new_status, new_substatus) == (old_status, before.get("substatus")):
        return
    if new_status not in SUBSTATUSES:
        raise RuleViolation(f"status '{new_status}' is not a valid status")
    allowed = NEXT_STATUSES.get(str(old_status))
    if allowed is not None and new_status not in allowed:
        raise RuleViolation(f"status cannot change from '{old_status}' to '{new_status}'")
    if new_substatus not in SUBSTATUSES[new_status]:
        valid = ", ".join(sorted(SUBSTATUSES[new_status]))
        raise RuleViolation(f"substatus '{new_substatus}' is not valid with status '{new_status}' (use {valid})")


def missing_fields(body: dict[str, Any], required: Iterable[str]) -> list[str]:
    return [name for name in required if not isinstance(body.get(name), dict | str) or not body.get(name)]


SERVICES_COSELL_FIELDS = ("solutionArea", "solutionPlay", "partnerRole")


def check_services_cosell(referral: dict[str, Any]) -> None:
    """Partner Center: "required for Services co-sell referrals only"; one of the three given needs the others."""
    given = [name for name in SERVICES_COSELL_FIELDS if referral.get(name) not in (None, "")]
    if given and len(given) < len(SERVICES_COSELL_FIELDS):
        missing = ", ".join(name for name in SERVICES_COSELL_FIELDS if name not in given)
        raise RuleViolation(
            f"a services co-sell referral needs solutionArea, solutionPlay and partnerRole; missing {missing}"
        )
