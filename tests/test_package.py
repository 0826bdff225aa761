"""The release zip (``make package`` / devtools/release/package.py): what the Functions host needs, for Linux
x86-64 and CPython 3.11, and nothing else - no tests, emulators, developer tools, local settings or keys.

The zip is built once per test session; downloaded wheels stay in dist/wheelhouse, so reruns are quick.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from devtools.localhost.azurite import DEV_KEY
from devtools.release import package

ROOT = Path(__file__).resolve().parent.parent
SITE = ".python_packages/lib/site-packages/"

# Everything the zip may hold at its root. A new top-level file or folder in the repository must be
# either deployed (add it here) or listed in .funcignore.
ZIP_ROOT = {"host.json", "function_app.py", "requirements.txt", "shared", ".python_packages"}
NOT_DEPLOYED = [
    "tests/",
    "emulators/",
    "devtools/",
    "infra/",
    "docs/",
    "mk/",
    "node_modules/",
    ".venv/",
    ".venv-infra/",
    ".venv-checkov/",
    ".github/",
    ".ci/",
    "dist/",
    "local.settings.json",
    "local.settings.sample.json",
    "Makefile",
    "README.md",
    "azure.yaml",
    "pyproject.toml",
    "package.json",
    "requirements-dev.txt",
    ".funcignore",
    "__azurite_db_table__.json",
    "refresh-token.txt",
]
SECRET_NAMES = re.compile(
    r"(^|/)(local\.settings\.json|\.env(\..*)?|id_rsa.*)$|\.(pem|pfx|p12|key)$|(^|/)[^/]*refresh-token[^/]*$"
)
SECRET_TEXT = re.compile(r"AccountKey=|SharedAccessSignature=|-----BEGIN [A-Z ]*PRIVATE KEY-----")
# Compiled modules must be for CPython 3.11 (or the stable ABI) on Linux x86-64.
NATIVE_OK = re.compile(r"(\.cpython-311-x86_64-linux-gnu\.so|\.abi3\.so)$")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[zipfile.ZipFile, list[str]]:
    output = tmp_path_factory.mktemp("package") / "cosell-connector.zip"
    result = subprocess.run(
        [sys.executable, "-m", "devtools.release.package", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"packaging failed:\n{result.stdout}\n{result.stderr}"
    archive = zipfile.ZipFile(output)
    return archive, archive.namelist()


def app_entries(names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith(".python_packages/")]


def test_zip_is_intact_and_has_the_expected_root(built):
    archive, names = built
    assert archive.testzip() is None
    assert len(names) == len(set(names)), "duplicate entries"
    roots = {n.split("/", 1)[0] for n in names}
    assert roots == ZIP_ROOT, (
        f"zip root {sorted(roots)}: deploy a new top-level file on purpose (ZIP_ROOT) or list it in .funcignore"
    )
    assert "host.json" in names and "function_app.py" in names
    assert archive.read("requirements.txt") == (ROOT / "requirements.txt").read_bytes()


def test_app_files_are_exactly_what_funcignore_leaves(built):
    _, names = built
    patterns = package.read_ignore_patterns(ROOT / ".funcignore")
    expected = sorted(p.as_posix() for p in package.app_files(ROOT, patterns))
    assert sorted(app_entries(names)) == expected
    shared = sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "shared").rglob("*.py") if "__pycache__" not in p.parts
    )
    assert shared and set(shared) <= set(names), "every module of the shared package is deployed"
    mappings = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "shared" / "crm").rglob("mapping.toml"))
    assert mappings == ["shared/crm/dynamics/mapping.toml", "shared/crm/salesforce/mapping.toml"]
    assert set(mappings) <= set(names), "each CRM's shipped field mapping is deployed: the app reads it at start-up"


@pytest.mark.parametrize("path", NOT_DEPLOYED)
def test_funcignore_excludes_what_is_not_deployed(path):
    patterns = package.read_ignore_patterns(ROOT / ".funcignore")
    rel = PurePosixPath(path.rstrip("/"))
    assert package.is_ignored(rel, path.endswith("/"), patterns), f".funcignore does not exclude {path}"


def test_nothing_from_tests_emulators_devtools_or_local_settings(built):
    _, names = built
    for name in app_entries(names):
        top = name.split("/", 1)[0]
        assert top not in {"tests", "emulators", "devtools", "infra", "docs", "node_modules", "dist", "mk"}, name
        assert not top.startswith((".venv", ".git", ".ci")), name
        assert not name.startswith("local.settings"), name
    for name in names:
        assert "__pycache__/" not in name and not name.endswith(".pyc"), name
        assert not name.startswith(SITE + "bin/"), name


def test_no_secrets_in_the_zip(built):
    archive, names = built
    for name in app_entries(names):
        assert not SECRET_NAMES.search(name), f"{name} looks like key material or local settings"
    for name in names:
        if SECRET_NAMES.search(name):  # in dependencies only public material, e.g. certifi's CA bundle
            assert "PRIVATE KEY" not in archive.read(name).decode("utf-8", errors="ignore"), name
    for name in app_entries(names):
        text = archive.read(name).decode("utf-8", errors="ignore")
        assert not SECRET_TEXT.search(text), f"{name} holds a key or connection string"
        assert DEV_KEY not in text, f"{name} holds the storage emulator key"


def test_dependencies_pinned_in_requirements_are_installed(built):
    _, names = built
    dist_infos = {n[len(SITE) :].split("/", 1)[0].lower() for n in names if n.startswith(SITE) and ".dist-info/" in n}
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert pins, "requirements.txt pins its dependencies"
    for name, version in pins:
        normalized = re.sub(r"[-_.]+", "_", name).lower()
        assert f"{normalized}-{version}.dist-info" in dist_infos, f"{name}=={version} missing"
    for module in (
        "azure/functions/__init__.py",
        "azure/data/tables/__init__.py",
        "azure/identity/__init__.py",
        "azure/storage/queue/__init__.py",
        "pydantic/__init__.py",
        "pydantic_settings/__init__.py",
    ):
        assert SITE + module in names, module


def test_native_code_is_linux_x86_64_cpython_311(built):
    archive, names = built
    native = [n for n in names if n.endswith((".so", ".pyd", ".dylib"))]
    assert any(n.startswith(SITE + "pydantic_core/_pydantic_core.cpython-311-x86_64-linux-gnu") for n in native)
    assert any(n.startswith(SITE + "cryptography/hazmat/bindings/") for n in native)
    for name in native:
        assert name.endswith(".so") and (NATIVE_OK.search(name) or ".libs/" in name), name
    wheel = next(n for n in names if re.match(re.escape(SITE) + r"pydantic_core-[^/]+\.dist-info/WHEEL$", n))
    tags = re.findall(r"^Tag: (\S+)$", archive.read(wheel).decode(), re.M)
    assert tags and all(t.startswith("cp311-cp311-manylinux") and t.endswith("x86_64") for t in tags), tags


def test_packaging_refuses_keys_and_skips_local_files(tmp_path):
    (tmp_path / "host.json").write_text('{"version": "2.0"}')
    (tmp_path / "function_app.py").write_text("app = None\n")
    (tmp_path / "requirements.txt").write_text("azure-functions\n")
    (tmp_path / ".funcignore").write_text(".funcignore\n")
    (tmp_path / "local.settings.json").write_text('{"Values": {}}')
    (tmp_path / "signing.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    files = package.app_files(tmp_path, package.read_ignore_patterns(tmp_path / ".funcignore"))
    assert [f.as_posix() for f in files] == ["app/__init__.py", "function_app.py", "host.json", "requirements.txt"]
    package.check_app_files(tmp_path, files)

    (tmp_path / "app" / "config.py").write_text('CONN = "DefaultEndpointsProtocol=https;AccountKey=abc"\n')
    files = package.app_files(tmp_path, [])
    with pytest.raises(package.PackageError, match=r"app/config\.py"):
        package.check_app_files(tmp_path, files)

    (tmp_path / "function_app.py").unlink()
    with pytest.raises(package.PackageError, match=r"function_app\.py"):
        package.check_app_files(tmp_path, package.app_files(tmp_path, []))


TOKEN_FILES = ["refresh-token.txt", "refresh-token.txt.bak", "old-refresh-token.txt", "shared/refresh-token.txt"]


def test_packaging_never_takes_a_refresh_token_file(tmp_path):
    (tmp_path / "host.json").write_text('{"version": "2.0"}')
    (tmp_path / "function_app.py").write_text("app = None\n")
    (tmp_path / "requirements.txt").write_text("azure-functions\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "__init__.py").write_text("")
    for name in TOKEN_FILES:
        (tmp_path / name).write_text("0.AXEA-a-refresh-token")
    # Even with a .funcignore that forgets them (an older checkout's), the files stay out.
    files = package.app_files(tmp_path, [])
    assert [f.as_posix() for f in files] == ["function_app.py", "host.json", "requirements.txt", "shared/__init__.py"]


@pytest.mark.parametrize("name", TOKEN_FILES)
def test_refresh_token_files_are_excluded_by_funcignore_and_gitignore(name):
    patterns = package.read_ignore_patterns(ROOT / ".funcignore")
    assert package.is_ignored(PurePosixPath(name), False, patterns), f".funcignore does not exclude {name}"
    ignored = subprocess.run(["git", "check-ignore", "--no-index", "-q", name], cwd=ROOT, check=False)
    assert ignored.returncode == 0, f".gitignore does not exclude {name}"
