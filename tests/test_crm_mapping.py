"""The declarative CRM field mapping: the shipped files, override files and settings merged over them, the
validation messages, ``python -m shared mapping show|check``, and a custom mapping changing what the app does
end to end, with no code edit, for both CRMs."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from emulators.dataverse import DataverseEmulator
from emulators.salesforce import SalesforceEmulator
from shared.__main__ import main
from shared.crm.dynamics.mapping import load_mapping as load_dataverse_mapping
from shared.crm.mapping import FIELD_KINDS, MappingError
from shared.crm.salesforce.mapping import load_mapping as load_salesforce_mapping
from shared.domain.opportunity import WRITABLE_FIELDS
from shared.settings import SettingsError, load_settings
from shared.wiring import load_crm_mapping
from tests.crm_view import DV_TOKEN
from tests.e2e_stack import CRMS

ROOT = Path(__file__).resolve().parent.parent
LOADERS = {"dynamics": load_dataverse_mapping, "salesforce": load_salesforce_mapping}
CRM_SETTINGS = (
    "CRM_",
    "DATAVERSE_",
    "SALESFORCE_",
    "CONFLICT_RULES",
    "PARTNER_CENTER_",
    "AZUREWEBJOBSSTORAGE",
)


def write(tmp_path: Path, text: str, name: str = "custom.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def env(monkeypatch, tmp_path):
    """An environment with no CRM or mapping settings of its own."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for key in list(os.environ):
        if key.upper().startswith(CRM_SETTINGS):
            monkeypatch.delenv(key, raising=False)
    return monkeypatch


# -- the shipped mappings -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("crm", CRMS)
def test_the_shipped_mapping_declares_every_neutral_field(crm):
    loaded = LOADERS[crm]()
    assert set(loaded.mapping.fields) == set(FIELD_KINDS) == WRITABLE_FIELDS
    assert loaded.sources == {}


def test_both_shipped_mappings_give_fields_the_same_owner_and_direction():
    dataverse, salesforce = load_dataverse_mapping().mapping, load_salesforce_mapping().mapping
    assert dataverse.owners() == salesforce.owners()
    assert set(dataverse.directions().values()) == {"both"} == set(salesforce.directions().values())
    assert dataverse.owners()["notes"] == "crm" and dataverse.owners()["status"] == "pc"


def test_the_emulators_have_the_columns_the_shipped_mappings_name():
    dataverse = DataverseEmulator().tables["opportunities"].columns
    for _, entry in load_dataverse_mapping().mapping.mapped():
        assert entry.column in dataverse or f"_{entry.column}_value" in dataverse
    salesforce = SalesforceEmulator().objects["Opportunity"]
    for _, entry in load_salesforce_mapping().mapping.mapped():
        assert salesforce.field(entry.column) is not None


# -- overrides --------------------------------------------------------------------------------------------------------
def test_an_override_file_is_merged_entry_by_entry(tmp_path):
    path = write(
        tmp_path,
        """
[fields.notes]
column = "new_partnernotes"

[fields.help_code.values]
GeneralOrOther = 100000009
""",
    )
    loaded = load_dataverse_mapping(path)
    notes = loaded.mapping.fields["notes"]
    assert (notes.column, notes.type, notes.owner) == ("new_partnernotes", "memo", "crm")  # the rest stays default
    values = loaded.mapping.fields["help_code"].values
    assert values["GeneralOrOther"] == 100000009 and values["ProofOfConceptOrDemo"] == 100000002
    assert loaded.sources == {
        ("fields", "notes", "column"): str(path),
        ("fields", "help_code", "values", "GeneralOrOther"): str(path),
    }


def test_settings_override_the_file_and_conflict_rules_override_owners(env, tmp_path):
    path = write(tmp_path, '[fields.audit]\ncolumn = "new_fromfile"\n[fields.notes]\nowner = "crm"\n')
    env.setenv("CRM_MAPPING_FILE", str(path))
    env.setenv("DATAVERSE_FIELD_AUDIT", "new_fromsetting")
    env.setenv("DATAVERSE_HELP_OPTION_VALUES", "GeneralOrOther=7")
    env.setenv("CONFLICT_RULES", "notes=pc")
    loaded = load_crm_mapping(load_settings(crm_only=True))
    assert loaded.mapping.column("audit") == "new_fromsetting"
    assert loaded.mapping.fields["help_code"].values == {"GeneralOrOther": 7}  # a setting replaces the whole table
    assert loaded.mapping.owners()["notes"] == "pc"
    assert loaded.sources[("fields", "audit", "column")] == "DATAVERSE_FIELD_AUDIT"
    assert loaded.sources[("fields", "notes", "owner")] == "CONFLICT_RULES"


def test_salesforce_stage_settings_override_the_stage_table(env):
    env.setenv("CRM_PROVIDER", "salesforce")
    env.setenv("SALESFORCE_ON_HOLD_STAGE", "Needs Analysis")
    env.setenv("SALESFORCE_WON_STAGE", "Closed - Won")
    env.setenv("SALESFORCE_CURRENCY_FIELD", "Currency__c")
    mapping = load_crm_mapping(load_settings(crm_only=True)).mapping
    assert mapping.status.stage_for("New", "Pending") == "Needs Analysis"
    assert mapping.status.stage_for("Closed", "Won") == "Closed - Won"
    assert mapping.status.stage_for("Closed", "Expired") == "Closed Lost"
    assert mapping.status.status_of("Needs Analysis", False, False) == ("New", "Pending")
    assert mapping.status.status_of("Prospecting", False, False) == ("Active", "Accepted")
    assert mapping.column("currency") == "Currency__c"


# -- validation -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("crm", "text", "message"),
    [
        (
            "dynamics",
            '[fields.deal_value]\ntype = "monee"\n',
            "fields.deal_value.type: 'monee' is not one of text, memo, list, money, date, choice, lookup, boolean",
        ),
        ("dynamics", '[fields.deal_value]\ntype = "text"\n', "fields.deal_value.type: 'text' cannot hold deal_value"),
        ("dynamics", '[fields.notes]\ncolum = "x"\n', "fields.notes.colum: is not a key of this table"),
        ("dynamics", '[fields.notes]\ndirection = "sideways"\n', "fields.notes.direction: 'sideways' is not one of"),
        ("dynamics", '[fields.referral_id]\ncolumn = ""\n', "fields.referral_id.column: is required"),
        ("dynamics", '[fields.audit]\nowner = "pc"\n', "fields.audit.owner: audit is the connector's own column"),
        ("dynamics", '[fields.help_code.values]\nGeneralOrOther = "x"\n', "values.GeneralOrOther: 'x' is not a whole"),
        ("dynamics", '[fields.notes]\ncolumn = "name"\n', "fields.notes.column: 'name' already holds name"),
        ("dynamics", '[fields.colour]\ntype = "text"\n', "fields.colour: is not a neutral field"),
        ("dynamics", '[status.write]\nClosed = "2"\n', "status.write.Closed: '2' must be statecode/statuscode"),
        ("dynamics", '[status.write]\n"Closed/Won" = "x/y"\n', "status.write.Closed/Won: 'x/y' is not statecode"),
        ("dynamics", '[status.read]\n"1" = "Closed/Pending"\n', "'Pending' is not a substatus of Closed"),
        ("dynamics", '[[extra]]\nsource = "status"\ncolumn = "x"\ntype = "text"\n', "extra.0.source: 'status'"),
        ("salesforce", '[status.stages]\nFinished = "Closed Won"\n', "status.stages.Finished: 'Finished' is not a"),
        ("salesforce", '[status.stages]\nActive = "Closed Lost"\n', "'Closed Lost' cannot be written both"),
        ("salesforce", '[fields.currency]\ntarget = "Money"\n', "fields.currency.target: 'Money' is not a lookup"),
    ],
)
def test_a_broken_mapping_is_refused_naming_the_file_the_entry_and_the_problem(tmp_path, crm, text, message):
    path = write(tmp_path, text)
    with pytest.raises(MappingError) as refused:
        LOADERS[crm](path)
    assert f"{path}: " in str(refused.value) and message in str(refused.value)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(MappingError, match=r"missing\.toml: the file does not exist"):
        load_dataverse_mapping(tmp_path / "missing.toml")
    with pytest.raises(MappingError, match=r"custom\.toml: not valid TOML: .*line 1"):
        load_dataverse_mapping(write(tmp_path, "[fields.notes\n"))


def test_a_broken_mapping_file_is_logged_at_start_up_naming_the_entry(tmp_path):
    path = write(tmp_path, '[fields.deal_value]\ntype = "monee"\n')
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(CRM_SETTINGS)}
    env.update(
        DATAVERSE_URL="https://contoso.crm.dynamics.com",
        AzureWebJobsStorage="UseDevelopmentStorage=true",
        PARTNER_CENTER_ACCESS_TOKEN="t",
        CRM_MAPPING_FILE=str(path),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    result = subprocess.run(
        [sys.executable, "-c", "import function_app"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    # The app stays loaded and answers "not configured: [CRM_MAPPING_FILE]" (tests/test_not_configured.py).
    assert result.returncode == 0, result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("The app is not configured: [CRM_MAPPING_FILE]")
    assert "Invalid configuration: CRM field mapping:" in last_line
    assert f"{path}: fields.deal_value.type: 'monee' is not one of text, memo" in last_line


def test_the_container_refuses_a_broken_mapping(env, tmp_path):
    from shared import wiring

    env.setenv("CRM_MAPPING_FILE", str(write(tmp_path, '[fields.sync_enabled]\ntype = "text"\n')))
    settings = load_settings(
        DATAVERSE_URL="https://contoso.crm.dynamics.com",
        AzureWebJobsStorage="UseDevelopmentStorage=true",
        PARTNER_CENTER_ACCESS_TOKEN="t",
    )
    with pytest.raises(SettingsError, match=r"fields\.sync_enabled\.type: 'text' cannot hold sync_enabled"):
        wiring.Container(settings)


# -- python -m shared mapping show | check -----------------------------------------------------------------------------
def test_mapping_show_prints_the_effective_mapping_with_where_overrides_came_from(env, tmp_path, capsys):
    path = write(
        tmp_path,
        '[fields.notes]\ncolumn = "new_partnernotes"\n\n[[extra]]\nsource = "notes"\n'
        'column = "new_copy"\ntype = "memo"\nmax_length = 100\n',
    )
    env.setenv("CRM_MAPPING_FILE", str(path))
    env.setenv("DATAVERSE_FIELD_AUDIT", "new_history")
    assert main(["mapping", "show"]) == 0
    out = capsys.readouterr().out
    assert tomllib.loads(out) == load_crm_mapping(load_settings(crm_only=True)).data
    assert f'column = "new_partnernotes"  # from {path}' in out
    assert 'column = "new_history"  # from DATAVERSE_FIELD_AUDIT' in out
    assert f"[[extra]]  # from {path}" in out
    assert 'column = "estimatedvalue"\n' in out  # defaults carry no mark


def test_mapping_check_without_a_crm_validates_the_file_only(env, capsys):
    assert main(["mapping", "check"]) == 0
    out = capsys.readouterr().out
    assert "mapping for dynamics: valid (the shipped defaults)" in out and "DATAVERSE_URL is not set" in out


def test_mapping_check_reports_a_broken_file(env, tmp_path, capsys):
    env.setenv("CRM_MAPPING_FILE", str(write(tmp_path, '[fields.notes]\ntype = "choice"\n')))
    assert main(["mapping", "check"]) == 2
    assert "fields.notes.type: 'choice' cannot hold notes" in capsys.readouterr().err


def _dataverse_env(env: Any, dv: DataverseEmulator) -> None:
    dv.reset()
    dv.set_required_token(DV_TOKEN)
    env.setenv("DATAVERSE_URL", dv.url)
    env.setenv("DATAVERSE_ACCESS_TOKEN", DV_TOKEN)


def test_mapping_check_against_dataverse_metadata(env, tmp_path, dv, capsys):
    _dataverse_env(env, dv)
    assert main(["mapping", "check"]) == 0
    assert "every mapped column exists in the CRM" in capsys.readouterr().out
    broken = """
[fields.notes]
column = "new_missingnotes"

[fields.solution_ids]
column = "closeprobability"

[fields.help_code.values]
GeneralOrOther = 100000042

[status.write]
Active = "0/7"

[customer]
account_country = "address1_nation"

[[extra]]
source = "notes"
column = "new_nowhere"
type = "memo"
"""
    env.setenv("CRM_MAPPING_FILE", str(write(tmp_path, broken)))
    assert main(["mapping", "check"]) == 1
    out = capsys.readouterr().out
    assert "fields.notes.column: 'new_missingnotes' is not a column of the opportunity table" in out
    assert "fields.solution_ids.column: 'closeprobability' is Integer in Dataverse; a list field needs String" in out
    assert "fields.help_code.values.GeneralOrOther: 100000042 is not an option of new_howcanmicrosofthelp" in out
    assert "status.write.Active: statuscode 7 is not a status of statecode 0" in out
    assert "customer.account_country: 'address1_nation' is not a column of the account table" in out
    assert "extra.0.column: 'new_nowhere' is not a column of the opportunity table" in out


def test_mapping_check_against_the_salesforce_describe(env, tmp_path, sf, capsys):
    sf.reset()
    env.setenv("CRM_PROVIDER", "salesforce")
    env.setenv("SALESFORCE_INSTANCE_URL", sf.url)
    env.setenv("SALESFORCE_ACCESS_TOKEN", sf.issue_token())
    assert main(["mapping", "check"]) == 0
    capsys.readouterr()
    broken = """
[fields.referral_link]
column = "Missing_Link__c"

[fields.deal_value]
column = "NextStep"

[fields.help_code.values]
GeneralOrOther = "Something else"

[status.stages]
New = "Waiting"
"""
    env.setenv("CRM_MAPPING_FILE", str(write(tmp_path, broken)))
    assert main(["mapping", "check"]) == 1
    out = capsys.readouterr().out
    assert "fields.referral_link.column: 'Missing_Link__c' is not a field of Opportunity" in out
    assert "fields.deal_value.column: 'NextStep' is string in Salesforce; a money field needs currency" in out
    assert "fields.help_code.values.GeneralOrOther: 'Something else' is not a value of How_can_Microsoft_help__c" in out
    assert "status.stages.New: 'Waiting' is not a stage of this org" in out


# -- end to end: a custom mapping changes what the app does, with no code edit ----------------------------------------
# Partner Center's notes also go to a custom column (cut to 40 characters), and the status table is the org's own:
# this Dynamics 365 org records every loss as Canceled (4, not Out-Sold 5); this Salesforce org's sales process
# starts at "Needs Analysis" and an accepted referral is at "Value Proposition".
CUSTOM = {
    "dynamics": """
[[extra]]
source = "notes"
column = "new_partnercenternotes"
type = "memo"
max_length = 40

[status.write]
"Closed/Lost" = "2/4"

[status.read]
"2/4" = "Closed/Lost"
""",
    "salesforce": """
[[extra]]
source = "notes"
column = "Partner_Center_Notes__c"
type = "memo"
max_length = 40

[status.stages]
New = "Needs Analysis"
Active = "Value Proposition"
""",
}
NOTES_COLUMN = {"dynamics": "new_partnercenternotes", "salesforce": "Partner_Center_Notes__c"}


def _with_notes_column(crm: str, view: Any) -> None:
    """The org has the custom column, as an admin would have added it."""
    emulator = view.emulator
    if crm == "dynamics":
        if NOTES_COLUMN[crm] not in emulator.tables["opportunities"].columns:
            emulator.add_column("opportunities", NOTES_COLUMN[crm], "memo")
    elif emulator.objects["Opportunity"].field(NOTES_COLUMN[crm]) is None:
        emulator.add_field("Opportunity", NOTES_COLUMN[crm], "textarea", 32000, label="Partner Center notes")


def _raw(crm: str, view: Any, crm_id: str) -> dict[str, Any]:
    if crm == "dynamics":
        return dict(view.emulator.record("opportunities", crm_id))
    return dict(view.emulator.record("Opportunity", crm_id))


@pytest.mark.parametrize("crm", CRMS)
def test_a_mapping_file_sends_notes_to_a_custom_column_and_uses_the_orgs_status_table(make_stack, tmp_path, crm):
    path = write(tmp_path, CUSTOM[crm])
    stack = make_stack(crm, CRM_MAPPING_FILE=str(path))
    _with_notes_column(crm, stack.view)
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    [row] = stack.opportunities()
    raw = _raw(crm, stack.view, row["id"])
    notes = referral["details"]["notes"]
    assert len(notes) > 40 and row["notes"] == notes  # the mapped column keeps the whole text
    assert raw[NOTES_COLUMN[crm]] == notes[:40]  # the copy is cut to the extra column's max_length
    if crm == "salesforce":
        assert raw["StageName"] == "Needs Analysis"  # a new referral, at this org's first stage

    stack.pc.portal_update(referral["id"], {"details": {"notes": "Scope doubled"}})
    stack.deliver_and_drain(2)
    assert _raw(crm, stack.view, row["id"])[NOTES_COLUMN[crm]] == "Scope doubled"
    if crm == "dynamics":
        stack.pc.portal_update(referral["id"], {"status": "Closed", "substatus": "Lost"})
        stack.deliver_and_drain(3)
        raw = _raw(crm, stack.view, row["id"])
        assert (raw["statecode"], raw["statuscode"]) == (2, 4)  # Canceled, where the shipped table says Out-Sold
    else:
        stack.pc.portal_update(referral["id"], {"status": "Active", "substatus": "Accepted"})
        stack.deliver_and_drain(3)
        assert _raw(crm, stack.view, row["id"])["StageName"] == "Value Proposition"

    # What the custom table writes reads back as the same status: an echo writes nothing on either side.
    stack.view.reset_counters()
    before = stack.pc.referral(referral["id"])
    stack.pc.send_event(referral["id"], "referral-updated")
    stack.deliver_and_drain(4)
    stack.poll()
    stack.host.drain()
    assert stack.crm_writes() == 0
    assert stack.pc.referral(referral["id"]) == before


@pytest.mark.parametrize("crm", CRMS)
def test_a_field_mapped_one_way_never_travels_back(make_stack, tmp_path, crm):
    path = write(tmp_path, '[fields.notes]\ndirection = "pc->crm"\n')
    stack = make_stack(crm, CRM_MAPPING_FILE=str(path))
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    [row] = stack.opportunities()
    assert row["notes"] == referral["details"]["notes"]  # Partner Center's notes reach the CRM

    stack.seller().edit(row["id"], notes="The seller's own notes")
    stack.poll()
    stack.host.drain()
    assert stack.pc.referral(referral["id"])["details"]["notes"] == referral["details"]["notes"]
    audit = stack.opportunity(row["id"])["audit"].splitlines()[0]
    assert "notes changed in the CRM; the mapping does not send it to Partner Center" in audit

    stack.pc.portal_update(referral["id"], {"details": {"notes": "Scope doubled"}})
    stack.deliver_and_drain(2)
    assert stack.opportunity(row["id"])["notes"] == "Scope doubled"  # the CRM owns notes, but only this way


@pytest.mark.parametrize("crm", CRMS)
def test_a_field_mapped_to_partner_center_only_is_not_written_to_a_new_opportunity(make_stack, tmp_path, crm):
    path = write(tmp_path, '[fields.notes]\ndirection = "crm->pc"\n')
    stack = make_stack(crm, CRM_MAPPING_FILE=str(path))
    referral = stack.pc.seed_referral(kind="cosell")
    stack.deliver_and_drain(1)
    [row] = stack.opportunities()
    assert row["notes"] is None and row["deal_value"] is not None

    stack.pc.portal_update(referral["id"], {"details": {"notes": "Scope doubled"}})
    stack.deliver_and_drain(2)
    assert stack.opportunity(row["id"])["notes"] is None

    stack.seller().edit(row["id"], notes="The seller's own notes")
    stack.poll()
    stack.host.drain()
    assert stack.pc.referral(referral["id"])["details"]["notes"] == "The seller's own notes"
