"""The operator CLI (issue 13): `cosell`, local.settings.json, only the settings each command uses, `history`,
`reconcile --since`, a description for every command. Against Azurite and the emulators."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import wiring
from shared.__main__ import build_parser, main
from shared.ports import KIND_CRM, Job
from shared.store.queue import encode_job

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("DATAVERSE_", "PARTNER_CENTER_", "AZUREWEBJOBSSTORAGE", "CRM_", "SALESFORCE_", "SYNC_")


@pytest.fixture
def checkout(monkeypatch, tmp_path, azurite, storage_names):
    """An operator's folder after the README's copy step: local.settings.json holds the storage settings (here:
    Azurite's) and nothing else is configured, neither the CRM nor Partner Center."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for key in list(os.environ):
        if key.upper().startswith(FAMILIES):
            monkeypatch.delenv(key, raising=False)
    values = {"AzureWebJobsStorage": azurite.connection_string, "DATAVERSE_URL": "", **storage_names}
    (tmp_path / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    monkeypatch.chdir(tmp_path)
    wiring.reset()
    yield tmp_path
    wiring.reset()


def test_status_reads_local_settings_json_and_needs_storage_only(checkout, capsys):
    assert main(["status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert "queue" in status and "poison" in status["queue"]
    # The file's values served the command without leaking into the environment of this process.
    assert "AzureWebJobsStorage" not in os.environ


def test_the_environment_wins_over_local_settings_json_and_empty_values_are_unset(tmp_path):
    from shared.local_settings import apply_local_settings

    path = tmp_path / "local.settings.json"
    values = {"AzureWebJobsStorage": "from-file", "SYNC_LINKS_TABLE": "FileLinks", "DATAVERSE_URL": ""}
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values}))
    environ = {"azurewebjobsstorage": "from-environment"}
    assert apply_local_settings(path, environ) == ["SYNC_LINKS_TABLE"]
    assert environ == {"azurewebjobsstorage": "from-environment", "SYNC_LINKS_TABLE": "FileLinks"}
    path.write_text(json.dumps({"IsEncrypted": True, "Values": values}))
    with pytest.raises(ValueError, match="encrypted"):
        apply_local_settings(path, {})


def test_status_works_right_after_the_readmes_copy_step(checkout, monkeypatch, azurite, capsys):
    # `cp local.settings.sample.json local.settings.json`: the CRM and Partner Center settings are still empty.
    (checkout / "local.settings.json").write_text((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)  # this test's Azurite, not port 10000
    assert main(["status"]) == 0
    assert "queue" in json.loads(capsys.readouterr().out)


def test_a_missing_storage_setting_is_named_and_nothing_else_is_asked_for(checkout, capsys):
    (checkout / "local.settings.json").write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
    assert main(["status"]) == 2
    error = capsys.readouterr().err
    assert "AzureWebJobsStorage" in error
    assert "DATAVERSE_URL" not in error and "PARTNER_CENTER" not in error


def test_an_unreadable_settings_file_is_named(checkout, capsys):
    (checkout / "broken.json").write_text("{not json")
    assert main(["--settings", "broken.json", "status"]) == 2
    assert "broken.json is not valid JSON" in capsys.readouterr().err
    assert main(["--settings", "absent.json", "status"]) == 2
    assert "absent.json (--settings) does not exist" in capsys.readouterr().err


def test_poison_list_and_replay_need_storage_only(checkout, capsys):
    queue = wiring.Container(_storage_settings()).queue
    queue.ensure()
    queue.poison.clear_messages()
    queue.client.clear_messages()
    queue.poison.send_message(encode_job(Job(KIND_CRM, "opp-1", reason="test")))
    assert main(["poison", "list", "--json"]) == 0
    assert [row["recordId"] for row in json.loads(capsys.readouterr().out)] == ["opp-1"]
    assert main(["replay-poison"]) == 0
    assert "replayed 1 job(s)" in capsys.readouterr().out
    assert [job.record_id for job in queue.peek_jobs()] == ["opp-1"]
    queue.client.clear_messages()


def _storage_settings():
    from shared.local_settings import apply_local_settings
    from shared.settings import load_settings

    applied = apply_local_settings(Path("local.settings.json"))
    try:
        return load_settings(storage_only=True)
    finally:
        for name in applied:
            os.environ.pop(name, None)


def test_history_prints_the_pairs_audit_trail_oldest_first_by_either_id(stack, capsys):
    stack.pc.dispatch_mode = "off"
    referral = stack.pc.seed_referral(kind="cosell")
    assert main(["reconcile"]) == 0
    stack.host.drain()
    crm_id = stack.opportunities()[0]["id"]
    stack.pc.portal_update(referral["id"], {"details": {"notes": "the customer asked for a demo"}}, raise_event=False)
    assert main(["reconcile"]) == 0
    stack.host.drain()
    capsys.readouterr()

    assert main(["history", referral["id"]]) == 0
    by_referral = capsys.readouterr().out
    assert main(["history", crm_id]) == 0
    assert capsys.readouterr().out == by_referral  # the same pair, whichever id is given
    lines = by_referral.splitlines()
    assert lines[0].startswith(f"History of referral {referral['id']} <-> CRM opportunity {crm_id}: ")
    stamps = [line[:23] for line in lines[1:] if line[:4].isdigit()]
    assert len(stamps) >= 2 and stamps == sorted(stamps)  # oldest first
    assert "created" in lines[1] and "Partner Center -> CRM" in lines[1]
    assert "fields:" in by_referral

    assert main(["history", "no-such-record"]) == 1
    assert "No audit entries for no-such-record" in capsys.readouterr().out


def test_reconcile_since_rereads_older_changes_and_leaves_the_watermark(stack, capsys, monkeypatch):
    stack.pc.dispatch_mode = "off"
    referral = stack.pc.seed_referral(kind="cosell")
    assert main(["reconcile"]) == 0
    stack.host.drain()
    assert main(["reconcile"]) == 0
    assert "0 job(s) enqueued" in capsys.readouterr().out  # the watermark is past the referral
    monkeypatch.delenv("DATAVERSE_URL")  # reconcile needs storage and Partner Center only
    wiring.reset()

    assert main(["reconcile", "--since", "2000-01-01"]) == 0
    out = capsys.readouterr().out
    assert "1 referral(s) changed since 2000-01-01T00:00:00+00:00, 1 job(s) enqueued" in out
    assert [job.record_id for job in stack.host.queue.peek_jobs()] == [referral["id"]]
    assert main(["reconcile"]) == 0
    assert "0 job(s) enqueued" in capsys.readouterr().out  # the scheduled run carries on where it was


def test_reconcile_since_refuses_a_date_it_cannot_read(capsys):
    with pytest.raises(SystemExit):
        main(["reconcile", "--since", "last tuesday"])
    assert "not an ISO 8601 date" in capsys.readouterr().err


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                yield (*prefix, name), command
                yield from _commands(command, (*prefix, name))


def test_every_command_has_a_description():
    commands = dict(_commands(build_parser()))
    assert {("status",), ("history",), ("reconcile",), ("replay-poison",), ("poison", "list")} <= set(commands)
    for path, command in commands.items():
        assert command.description and len(command.description) > 20, path
        assert command.description in " ".join(command.format_help().split()) or command.description.split()[0] in (
            command.format_help()
        ), path


def test_the_cosell_console_script_is_installed():
    script = Path(sys.executable).parent / "cosell"
    result = subprocess.run([str(script), "history", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cosell history")
    assert "oldest first" in result.stdout
