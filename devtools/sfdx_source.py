"""Writes ``crm/salesforce/`` (SFDX source: the custom Opportunity and Lead fields and the permission set) from the
shipped Salesforce mapping, with the same definitions ``python -m shared setup-crm --apply`` creates through the
Tooling API.

``python -m devtools.sfdx_source`` rewrites the files; ``--check`` only says whether they are current (exit 1 when
not). ``tests/test_setup_crm.py`` fails when the files and the mapping disagree, so a field added to
``shared/crm/salesforce/mapping.toml`` needs this run once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from shared.crm.salesforce.mapping import default_mapping
from shared.crm.salesforce.setup import DEFAULT_PERMISSION_SET, OBJECT_ACCESS, custom_fields_by_object, field_metadata

ROOT = Path(__file__).resolve().parent.parent / "crm" / "salesforce"
SOURCE = Path("force-app") / "main" / "default"
API_VERSION = "62.0"
NAMESPACE = "http://soap.sforce.com/2006/04/metadata"


def _elements(values: Mapping[str, Any], indent: str) -> Iterator[str]:
    for key in sorted(values, key=lambda k: (k != "fullName", k)):
        value = values[key]
        if isinstance(value, dict):
            yield f"{indent}<{key}>"
            yield from _elements(value, indent + "    ")
            yield f"{indent}</{key}>"
        elif isinstance(value, list):
            for item in value:
                yield f"{indent}<{key}>"
                yield from _elements(item, indent + "    ")
                yield f"{indent}</{key}>"
        else:
            text = ("true" if value else "false") if isinstance(value, bool) else escape(str(value))
            yield f"{indent}<{key}>{text}</{key}>"


def _document(root: str, values: Mapping[str, Any]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', f'<{root} xmlns="{NAMESPACE}">']
    lines += _elements(values, "    ")
    lines.append(f"</{root}>")
    return "\n".join(lines) + "\n"


def _field_xml(metadata: dict[str, Any], name: str) -> str:
    values = {"fullName": name, **metadata}
    value_set = values.get("valueSet")
    if value_set:
        definition = value_set["valueSetDefinition"]
        values["valueSet"] = {**value_set, "valueSetDefinition": {**definition, "value": definition["value"]}}
    if values.get("type") in ("Text", "LongTextArea", "Url", "Picklist"):
        values.setdefault("required", False)
    return _document("CustomField", values)


def _permission_set_xml(field_names: list[str]) -> str:
    """``field_names``: ``Object.Field__c``."""
    values: dict[str, Any] = {
        "description": "What the Partner Center co-sell connector's run-as user needs.",
        "fieldPermissions": [{"editable": True, "field": name, "readable": True} for name in sorted(field_names)],
        "hasActivationRequired": False,
        "label": "Co-sell connector",
        "objectPermissions": [
            {
                "allowCreate": create,
                "allowDelete": False,
                "allowEdit": edit,
                "allowRead": read,
                "modifyAllRecords": False,
                "object": sobject,
                "viewAllRecords": view_all,
            }
            for sobject, (read, create, edit, view_all) in sorted(OBJECT_ACCESS.items())
        ],
    }
    return _document("PermissionSet", values)


def source_files() -> dict[Path, str]:
    """Every file of ``crm/salesforce/``, relative to it, and its content."""
    objects = custom_fields_by_object(default_mapping())
    files: dict[Path, str] = {
        Path("sfdx-project.json"): json.dumps(
            {
                "packageDirectories": [{"path": "force-app", "default": True}],
                "name": "cosell-connector",
                "namespace": "",
                "sourceApiVersion": API_VERSION,
            },
            indent=2,
        )
        + "\n"
    }
    for sobject, fields in objects.items():
        fields_dir = SOURCE / "objects" / sobject / "fields"
        for field in fields:
            files[fields_dir / f"{field.column}.field-meta.xml"] = _field_xml(field_metadata(field), field.column)
    permission_set = SOURCE / "permissionsets" / f"{DEFAULT_PERMISSION_SET}.permissionset-meta.xml"
    files[permission_set] = _permission_set_xml([f"{o}.{f.column}" for o, fields in objects.items() for f in fields])
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only say whether the files are current")
    args = parser.parse_args(argv)
    wanted = source_files()
    stale = [p for p, text in wanted.items() if not (ROOT / p).is_file() or (ROOT / p).read_text("utf-8") != text]
    extra = [
        p.relative_to(ROOT)
        for p in (ROOT / SOURCE).rglob("*-meta.xml")
        if p.relative_to(ROOT) not in wanted and (ROOT / SOURCE).is_dir()
    ]
    if args.check:
        for path in [*stale, *extra]:
            print(f"out of date: crm/salesforce/{path}")
        return 1 if stale or extra else 0
    for path in stale:
        (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
        (ROOT / path).write_text(wanted[path], "utf-8")
        print(f"wrote crm/salesforce/{path}")
    for path in extra:
        (ROOT / path).unlink()
        print(f"removed crm/salesforce/{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
