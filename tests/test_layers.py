"""The layering of ARCHITECTURE.md §3, checked on the source: imports point downward only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT / "shared"
EMULATORS = ROOT / "emulators"


def _imports(path: Path) -> set[str]:
    """Absolute module names imported by a file of the repository (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
            else:
                found.add(node.module or "")
    return found


def _files(folder: str, root: Path = SHARED) -> list[Path]:
    """Every module of a folder, its subpackages included, or the one file named."""
    return sorted((root / folder).rglob("*.py")) if (root / folder).is_dir() else [root / folder]


def _id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _third_party(name: str) -> bool:
    top = name.split(".")[0]
    return top not in sys.stdlib_module_names and top != "shared" and top != "__future__"


@pytest.mark.parametrize("path", _files("domain"), ids=_id)
def test_domain_is_pure(path):
    imports = _imports(path)
    assert {i for i in imports if _third_party(i)} <= {"pydantic", "pydantic.alias_generators"}
    assert all(i.startswith("shared.domain") for i in imports if i.startswith("shared"))


@pytest.mark.parametrize("path", _files("sync"), ids=_id)
def test_services_see_only_domain_and_ports(path):
    imports = _imports(path)
    allowed = ("shared.domain", "shared.ports", "shared.sync")
    assert all(i.startswith(allowed) for i in imports if i.startswith("shared")), imports
    # pydantic models are allowed (the webhook body); clients, SDKs and HTTP are not: services do no I/O.
    assert {i for i in imports if _third_party(i)} <= {"pydantic"}


@pytest.mark.parametrize("path", [*_files("crm"), *_files("partner_center"), *_files("store")], ids=_id)
def test_adapters_do_not_reach_up(path):
    imports = _imports(path)
    assert not any(i.startswith(("shared.sync", "shared.functions", "shared.wiring")) for i in imports), imports


@pytest.mark.parametrize("path", [*_files("partner_center"), *_files("store")], ids=_id)
def test_partner_center_and_storage_adapters_are_built_from_config_objects_not_settings(path):
    # Wiring turns Settings into each adapter's small config object; an adapter that read Settings itself
    # would depend on every setting of the app, and could only be built from all of them.
    imports = _imports(path)
    assert not any(i.startswith("shared.settings") for i in imports), imports


@pytest.mark.parametrize("path", _files("crm"), ids=_id)
def test_crm_adapters_are_built_from_config_objects_not_settings(path):
    # Wiring turns Settings into DataverseConfig / SalesforceConfig and the effective field mapping; the field-name
    # settings reach an adapter only as entries of that mapping.
    imports = _imports(path)
    assert not any(i.startswith("shared.settings") for i in imports), imports


@pytest.mark.parametrize("path", _files("functions"), ids=_id)
def test_triggers_stay_thin(path):
    imports = _imports(path)
    assert not any(i.startswith(("shared.crm", "shared.partner_center", "shared.store.tables")) for i in imports)


@pytest.mark.parametrize("path", _files(".", EMULATORS), ids=_id)
def test_emulators_stand_apart_from_the_app(path):
    # An emulator that borrowed the connector's code would agree with the connector's mistakes.
    imports = _imports(path)
    assert not any(i.split(".")[0] in {"shared", "devtools", "tests", "function_app"} for i in imports), imports
