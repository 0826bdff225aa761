"""docs/deploy.md names only what exists: every ``python -m shared`` / ``cosell`` command it shows is accepted by the
CLI's own parser (command, subcommand, options), every setting it names is one the app reads (shared/settings.py),
the Functions host reads, or azd passes to the template, and every ``python -m`` module and ``make`` target exists."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

from shared.__main__ import build_parser
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "deploy.md"
# A command starts a code line or an inline code span; it ends at the span, a comment or a shell operator.
COMMAND = re.compile(r"(?m)(?:^[ \t]*|`)(?:python -m shared|cosell)((?:[ \t]+[^`\n#|;&)]+)?)")
SETTING = re.compile(r"\b(AzureWebJobsStorage(?:__\w+)?|[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)\b")
AZD_SET = re.compile(r"azd env set ([A-Z_]+)")
# Read by azd itself rather than by the template's parameters file.
AZD_OWN = {"AZURE_LOCATION", "AZURE_RESOURCE_GROUP", "AZURE_SUBSCRIPTION_ID", "AZURE_ENV_NAME"}
# The Functions host's own settings, and the one operating-system variable the doc explains.
HOST_AND_OS = {"AzureWebJobsStorage", "FUNCTIONS_WORKER_RUNTIME", "XDG_CONFIG_HOME"}


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _commands() -> list[str]:
    found = []
    for match in COMMAND.finditer(_doc()):
        words = re.sub(r"<[^>]*>", "PLACEHOLDER", match.group(1)).replace("\\", " ").split()
        if words:  # a bare `cosell` names the script, not a command
            found.append(" ".join(words))
    return sorted(set(found))


def _app_settings() -> set[str]:
    names = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        for choice in getattr(alias, "choices", [alias]):
            if isinstance(choice, str):
                names.add(choice)
    return names


def test_the_doc_shows_the_first_day_commands() -> None:
    shown = [c.split() for c in _commands()]
    for command, *options in (
        ("setup-crm",),
        ("setup-crm", "--apply"),
        ("login",),
        ("register-webhook", "--url"),
        ("register-webhook", "--url", "--force"),
        ("status",),
        ("history",),
    ):
        assert any(command in words and set(options) <= set(words) for words in shown), (command, options)


@pytest.mark.parametrize("command", _commands())
def test_every_command_in_the_doc_is_accepted_by_the_cli(command: str) -> None:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = build_parser().parse_args(command.split())
    except SystemExit as exc:
        complaint = (errors.getvalue().strip().splitlines() or ["no such command"])[-1]
        raise AssertionError(f"`{command}` from docs/deploy.md: {complaint}") from exc
    assert isinstance(args, argparse.Namespace) and callable(getattr(args, "run", None)), command


def test_every_setting_in_the_doc_exists() -> None:
    text = _doc()
    azd = set(AZD_SET.findall(text))
    parameters = (ROOT / "infra" / "main.parameters.json").read_text()
    unknown_azd = {n for n in azd if n not in AZD_OWN and "${" + n not in parameters}
    assert not unknown_azd, f"azd env set names no parameter of infra/main.parameters.json: {sorted(unknown_azd)}"
    known = _app_settings() | HOST_AND_OS | azd
    named = set(SETTING.findall(text))
    unknown = sorted(n for n in named if n not in known and not n.startswith("AzureWebJobsStorage__"))
    assert not unknown, f"docs/deploy.md names settings the app does not read: {unknown}"
    identity_based = {n for n in named if n.startswith("AzureWebJobsStorage__")}
    assert identity_based <= _app_settings() | {"AzureWebJobsStorage__clientId"}, identity_based


def test_every_module_and_make_target_in_the_doc_exists() -> None:
    text = _doc()
    for module in set(re.findall(r"python -m ([\w.]+)", text)):
        assert importlib.util.find_spec(module) is not None, f"python -m {module}: no such module"
    makefiles = "\n".join(p.read_text() for p in [ROOT / "Makefile", *(ROOT / "mk").glob("*.mk")])
    targets = set(re.findall(r"(?m)^([a-z][\w-]*)\s*:", makefiles))
    for target in set(re.findall(r"`make ([a-z][\w-]*)", text)):
        assert target in targets, f"make {target}: no such target"
