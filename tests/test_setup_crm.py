"""``python -m shared setup-crm`` against CRM emulators started without the connector's custom fields, over HTTP, on
both CRMs: check mode reports what is missing and changes nothing, ``--apply`` creates the fields, the key or
External ID and the role or permission set, a second ``--apply`` creates nothing, and then a referral really
syncs into the org it set up. The lead's referral-id column, its key and the lead grants are set up too, whether or
not leads are on (``SYNC_COSELL_ONLY``), and a Partner Center lead then becomes a CRM lead. A metadata call refused
with 403 is reported with the CRM's reason. The SFDX source in ``crm/salesforce/`` is checked against the shipped
Salesforce mapping so the two cannot drift apart."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.dataverse import DataverseEmulator
from emulators.dataverse.schema import INTEGRATION_APP_ID
from emulators.salesforce import SalesforceEmulator
from emulators.salesforce.schema import USER_ID, USERS
from shared.__main__ import main
from shared.crm.salesforce.mapping import default_mapping as salesforce_mapping
from tests.crm_view import DV_TOKEN
from tests.e2e_stack import CRMS

ROOT = Path(__file__).resolve().parent.parent
SFDX = ROOT / "crm" / "salesforce"
SFDX_SOURCE = SFDX / "force-app" / "main" / "default"
NS = {"md": "http://soap.sforce.com/2006/04/metadata"}
RUN_AS_USER = USERS[USER_ID][1]
LEADS_ON = {"SYNC_COSELL_ONLY": "false"}
# What setup-crm reports for the lead's referral-id column and its key / External ID, and a lead grant.
LEAD_REFERRAL = {
    "dynamics": ("lead column new_referralidentifier", "alternate key on new_referralidentifier (lead)"),
    "salesforce": ("field Lead.Referral_Identfier__c", "field Lead.Referral_Identfier__c (Referral Identifier): Text"),
}
LEAD_GRANTS = {
    "dynamics": (
        "privilege prvReadLead",
        "privilege prvCreateLead",
        "privilege prvWriteLead",
        "privilege prvAssignLead",  # a new lead goes to the owner INBOUND_OWNER names
    ),
    "salesforce": ("object permissions on Lead", "field access to Lead.Referral_Identfier__c"),
}


@pytest.fixture
def dv() -> Iterator[DataverseEmulator]:
    """An organisation nobody has set up for the connector: no custom opportunity columns, no alternate key."""
    emulator = DataverseEmulator(required_token=DV_TOKEN, custom_columns=False).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def sf() -> Iterator[SalesforceEmulator]:
    """An org nobody has set up for the connector: Opportunity without the custom fields."""
    emulator = SalesforceEmulator(custom_fields=False).start()
    yield emulator
    emulator.stop()


@pytest.fixture(params=CRMS)
def crm(request) -> str:
    return request.param


def _identity(crm: str) -> list[str]:
    return ["--application-id", INTEGRATION_APP_ID] if crm == "dynamics" else ["--run-as-user", RUN_AS_USER]


def _org_state(stack: Any) -> Any:
    """What setup-crm may change: the opportunity's columns/fields and the security setup."""
    if stack.crm_name == "dynamics":
        emulator: DataverseEmulator = stack.view.emulator
        table, leads = emulator.tables["opportunities"], emulator.tables["leads"]
        return (sorted(table.columns), table.keys, sorted(leads.columns), leads.keys, emulator.table("roles"))
    org: SalesforceEmulator = stack.view.emulator
    names = ("PermissionSet", "ObjectPermissions", "FieldPermissions", "PermissionSetAssignment")
    objects = [sorted(org.objects[name].fields) for name in ("Opportunity", "Lead")]
    return (objects, [len(org.records(name)) for name in names])


def _marked(out: str, mark: str) -> list[str]:
    return [line for line in out.splitlines() if line.split()[:1] == [mark]]


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main(["setup-crm", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_check_apply_apply_again_then_a_referral_syncs(make_stack, crm, capsys):
    stack = make_stack(crm)
    before = _org_state(stack)

    code, out = _run(capsys, *_identity(crm))
    assert code == 1, out
    referral_field = "new_referralidentifier" if crm == "dynamics" else "Opportunity.Referral_Identfier__c"
    assert any(line.split()[:1] == ["MISSING"] and referral_field in line for line in out.splitlines()), out
    assert "0 created" in out and "something required is missing" in out
    missing = _marked(out, "MISSING")
    # Leads are off here (SYNC_COSELL_ONLY defaults to true), and the lead's column is still checked.
    for what in LEAD_REFERRAL[crm][:1]:
        assert any(what in line for line in missing), out
    assert _org_state(stack) == before, "check mode changed the org"

    code, out = _run(capsys, "--apply", *_identity(crm))
    assert code == 0, out
    assert "MISSING" not in out and "FAILED" not in out, out
    created = [line for line in out.splitlines() if line.split()[:1] == ["created"]]
    assert any(referral_field in line for line in created), out
    if crm == "dynamics":
        assert any("alternate key on new_referralidentifier" in line for line in created), out
        assert any("security role 'Co-sell connector'" in line for line in created), out
        assert any("application user" in line for line in created), out
        assert any("options of" in line or "Picklist" in line for line in created), out
    else:
        assert any("External ID" in line for line in created), out
        assert any("permission set Cosell_Connector" in line for line in created), out
        assert any("field access to Opportunity.Audit__c" in line for line in created), out
        assert any(f"run-as user {RUN_AS_USER}" in line for line in created), out
    for what in (*LEAD_REFERRAL[crm], *LEAD_GRANTS[crm]):
        assert any(what in line for line in created), (what, out)
    after_apply = _org_state(stack)
    assert after_apply != before

    code, out = _run(capsys, "--apply", *_identity(crm))
    assert code == 0, out
    assert not [line for line in out.splitlines() if line.split()[:1] == ["created"]], out
    assert "0 created" in out
    assert _org_state(stack) == after_apply, "a second --apply changed the org"

    code, out = _run(capsys, *_identity(crm))
    assert code == 0, out

    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    rows = stack.opportunities()
    assert [row["referral_id"] for row in rows] == [referral["id"]]
    assert rows[0]["sync"] is True
    assert rows[0]["help"] is not None
    assert "Created from Partner Center referral" in rows[0]["audit"]


def test_a_partner_center_lead_becomes_a_crm_lead_in_the_org_setup_crm_made(make_stack, crm, capsys):
    stack = make_stack(crm, **LEADS_ON)

    code, out = _run(capsys, *_identity(crm))
    assert code == 1, out
    missing = _marked(out, "MISSING")
    assert any(LEAD_REFERRAL[crm][0] in line for line in missing), out
    if crm == "dynamics":
        assert any(LEAD_REFERRAL[crm][1] in line for line in missing), out

    code, out = _run(capsys, "--apply", *_identity(crm))
    assert code == 0, out
    created = _marked(out, "created")
    for what in (*LEAD_REFERRAL[crm], *LEAD_GRANTS[crm]):
        assert any(what in line for line in created), (what, out)

    referral = stack.pc.seed_referral(kind="lead")
    stack.deliver_and_drain(1)
    emulator: Any = stack.view.emulator  # type: ignore[attr-defined]
    if crm == "dynamics":
        leads = [(row.get("new_referralidentifier"), row.get("companyname")) for row in emulator.table("leads")]
    else:
        leads = [(row.get("Referral_Identfier__c"), row.get("Company")) for row in emulator.records("Lead")]
    assert leads == [(referral["id"], "Fabrikam Inc.")]
    assert stack.opportunities() == []


def test_a_refused_metadata_call_is_reported_with_the_reason(make_stack, crm, capsys):
    stack = make_stack(crm)
    if crm == "dynamics":
        stack.view.emulator.inject_fault(403, count=100, method="POST", path=r"EntityDefinitions.*/Attributes$")
        reason = "is missing the privilege"
        column = "new_referralidentifier"
    else:
        stack.view.emulator.inject_fault(
            403,
            count=100,
            method="POST",
            path="tooling/sobjects/CustomField",
            error_code="INSUFFICIENT_ACCESS_OR_READONLY",
            message="insufficient access rights on object id",
        )
        reason = "insufficient access rights"
        column = "Opportunity.Referral_Identfier__c"

    code, out = _run(capsys, "--apply", *_identity(crm))

    assert code == 1, out
    failed = [line for line in out.splitlines() if line.split()[:1] == ["FAILED"]]
    line = next((f for f in failed if column in f), None)
    assert line is not None, out
    assert "403" in line and reason in line, line
    assert "could not be set up" in out


# -- the SFDX source --------------------------------------------------------------------------------------------------
SALESFORCE_TYPES = {"boolean": {"Checkbox"}, "text": {"Text", "LongTextArea", "Url"}, "list": {"Text", "LongTextArea"}}
SALESFORCE_TYPES |= {"memo": {"LongTextArea"}, "choice": {"Picklist"}, "money": {"Currency"}, "date": {"Date"}}


def _text(element: ET.Element, tag: str) -> str | None:
    found = element.find(f"md:{tag}", NS)
    return None if found is None else found.text


def test_the_sfdx_fields_match_the_shipped_salesforce_mapping():
    mapping = salesforce_mapping()
    wanted = {e.column: (n, e) for n, e in mapping.mapped() if e.column.endswith("__c")}
    files = sorted((SFDX_SOURCE / "objects" / "Opportunity" / "fields").glob("*.field-meta.xml"))
    found = {path.name.removesuffix(".field-meta.xml"): ET.parse(path).getroot() for path in files}
    assert sorted(found) == sorted(wanted), "run: python -m devtools.sfdx_source"
    for column, root in found.items():
        name, entry = wanted[column]
        assert _text(root, "fullName") == column
        assert _text(root, "type") in SALESFORCE_TYPES[entry.type], (column, _text(root, "type"))
        if name == "referral_id":
            assert (_text(root, "externalId"), _text(root, "unique")) == ("true", "true")
        if name == "referral_link":
            assert _text(root, "type") == "Url"
        if entry.max_length and _text(root, "type") == "Text":
            assert int(_text(root, "length") or 0) <= entry.max_length
        if entry.type == "choice":
            values = [
                (_text(v, "fullName"), _text(v, "label"))
                for v in root.findall("md:valueSet/md:valueSetDefinition/md:value", NS)
            ]
            assert values == [(str(v), str(v)) for v in entry.values.values()], column
            assert root.findtext("md:valueSet/md:restricted", namespaces=NS) == "true"


def test_the_sfdx_lead_referral_field_is_a_unique_external_id():
    column = salesforce_mapping().lead.referral_id
    files = sorted((SFDX_SOURCE / "objects" / "Lead" / "fields").glob("*.field-meta.xml"))
    assert [path.name for path in files] == [f"{column}.field-meta.xml"], "run: python -m devtools.sfdx_source"
    root = ET.parse(files[0]).getroot()
    assert (_text(root, "fullName"), _text(root, "type")) == (column, "Text")
    assert (_text(root, "externalId"), _text(root, "unique")) == ("true", "true")


def test_the_sfdx_permission_set_grants_every_field_and_object():
    root = ET.parse(SFDX_SOURCE / "permissionsets" / "Cosell_Connector.permissionset-meta.xml").getroot()
    columns = {e.column for _, e in salesforce_mapping().mapped() if e.column.endswith("__c")}
    lead_referral = salesforce_mapping().lead.referral_id
    granted = {
        _text(p, "field"): (_text(p, "readable"), _text(p, "editable")) for p in root.findall("md:fieldPermissions", NS)
    }
    wanted = {f"Opportunity.{c}": ("true", "true") for c in columns} | {f"Lead.{lead_referral}": ("true", "true")}
    assert granted == wanted
    objects = {_text(p, "object"): p for p in root.findall("md:objectPermissions", NS)}
    assert set(objects) == {"Opportunity", "Lead", "Account", "Contact"}
    for grant in objects.values():
        assert [_text(grant, k) for k in ("allowRead", "allowCreate", "allowEdit", "viewAllRecords")] == ["true"] * 4
        assert _text(grant, "allowDelete") == "false"
    assert (SFDX / "sfdx-project.json").is_file()


def test_the_sfdx_source_is_what_the_generator_writes():
    from devtools import sfdx_source

    assert sfdx_source.main(["--check"]) == 0, "run: python -m devtools.sfdx_source"


# -- the emulated metadata APIs are as strict as the documentation --------------------------------------------------
def _label(text: str) -> dict[str, Any]:
    return {"LocalizedLabels": [{"Label": text, "LanguageCode": 1033}]}


def test_dataverse_metadata_api_refuses_bad_definitions_and_serves_new_columns(dv):
    headers = {"Authorization": f"Bearer {DV_TOKEN}", "OData-Version": "4.0"}
    api = f"{dv.url}/api/data/v9.2"
    attributes = f"{api}/EntityDefinitions(LogicalName='opportunity')/Attributes"
    text = {"@odata.type": "Microsoft.Dynamics.CRM.StringAttributeMetadata", "MaxLength": 100}

    unwritable = requests.post(f"{api}/opportunities", json={"name": "x", "new_code": "A"}, headers=headers, timeout=5)
    assert unwritable.status_code == 400
    no_prefix = requests.post(
        attributes, json={**text, "SchemaName": "code", "DisplayName": _label("Code")}, headers=headers, timeout=5
    )
    assert no_prefix.status_code == 400 and "prefix" in no_prefix.json()["error"]["message"]
    no_label = requests.post(attributes, json={**text, "SchemaName": "new_Code"}, headers=headers, timeout=5)
    assert no_label.status_code == 400
    body = {**text, "SchemaName": "new_Code", "DisplayName": _label("Code")}
    assert requests.post(attributes, json=body, headers=headers, timeout=5).status_code == 204
    assert requests.post(attributes, json=body, headers=headers, timeout=5).status_code == 400  # exists
    key = {"SchemaName": "new_code_key", "DisplayName": _label("Code"), "KeyAttributes": ["new_missing"]}
    keys = f"{api}/EntityDefinitions(LogicalName='opportunity')/Keys"
    assert requests.post(keys, json=key, headers=headers, timeout=5).status_code == 400
    assert (
        requests.post(keys, json={**key, "KeyAttributes": ["new_code"]}, headers=headers, timeout=5).status_code == 204
    )

    created = requests.post(f"{api}/opportunities", json={"name": "x", "new_code": "A"}, headers=headers, timeout=5)
    assert created.status_code == 204, created.text
    by_key = requests.get(f"{api}/opportunities(new_code='A')?$select=name", headers=headers, timeout=5)
    assert by_key.status_code == 200 and by_key.json()["name"] == "x"


def test_salesforce_tooling_api_refuses_bad_definitions_and_serves_new_fields(sf):
    headers = {"Authorization": f"Bearer {sf.issue_token()}"}
    tooling = f"{sf.url}/services/data/v62.0/tooling/sobjects/CustomField"
    no_length = {"FullName": "Opportunity.Code__c", "Metadata": {"label": "Code", "type": "Text"}}
    refused = requests.post(tooling, json=no_length, headers=headers, timeout=5)
    assert refused.status_code == 400 and refused.json()[0]["errorCode"] == "FIELD_INTEGRITY_EXCEPTION"
    bad_name = {"FullName": "Opportunity.Code", "Metadata": {"label": "Code", "type": "Text", "length": 10}}
    assert requests.post(tooling, json=bad_name, headers=headers, timeout=5).status_code == 400
    good = {
        "FullName": "Opportunity.Code__c",
        "Metadata": {"label": "Code", "type": "Text", "length": 10, "externalId": True},
    }
    answer = requests.post(tooling, json=good, headers=headers, timeout=5)
    assert answer.status_code == 201 and answer.json()["success"] is True
    again = requests.post(tooling, json=good, headers=headers, timeout=5)
    assert again.status_code == 400 and again.json()[0]["errorCode"] == "DUPLICATE_DEVELOPER_NAME"

    upsert = requests.patch(
        f"{sf.url}/services/data/v62.0/sobjects/Opportunity/Code__c/A1",
        json={"Name": "x", "StageName": "Prospecting", "CloseDate": "2030-01-01"},
        headers=headers,
        timeout=5,
    )
    assert upsert.status_code == 201, upsert.text


def test_a_value_added_to_the_mapping_is_added_to_the_existing_choice(make_stack, crm, capsys, tmp_path, monkeypatch):
    make_stack(crm)
    assert _run(capsys, "--apply", *_identity(crm))[0] == 0
    value = "100000006" if crm == "dynamics" else '"Co-sell planning"'
    mapping = tmp_path / "custom.toml"
    mapping.write_text(f"[fields.help_code.values]\nCoSellPlanning = {value}\n", encoding="utf-8")
    monkeypatch.setenv("CRM_MAPPING_FILE", str(mapping))
    column = "new_howcanmicrosofthelp" if crm == "dynamics" else "How_can_Microsoft_help__c"

    code, out = _run(capsys, *_identity(crm))
    assert code == 1
    assert any(
        line.split()[:1] == ["MISSING"] and column in line and value.strip('"') in line for line in out.splitlines()
    )

    code, out = _run(capsys, "--apply", *_identity(crm))
    assert code == 0, out
    assert any(line.split()[:1] == ["created"] and column in line for line in out.splitlines()), out

    code, out = _run(capsys, *_identity(crm))
    assert code == 0, out
    assert main(["mapping", "check"]) == 0, capsys.readouterr().out
