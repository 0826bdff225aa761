"""Build the release zip the Azure Functions host runs (Flex Consumption, Linux x86-64, Python 3.11).

The zip holds the app files at its root (``host.json``, ``function_app.py``, ``shared/`` ...), chosen
by ``.funcignore``, and the dependencies from ``requirements.txt`` under
``.python_packages/lib/site-packages``, installed from manylinux x86-64 CPython 3.11 wheels whatever
machine builds it. The platform runs it as is (no remote build).

    python -m devtools.release.package [--output dist/cosell-connector.zip] [--wheelhouse dist/wheelhouse]

Downloaded wheels are kept in the wheelhouse, so a rebuild with unchanged requirements works offline.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "dist" / "cosell-connector.zip"
DEFAULT_WHEELHOUSE = ROOT / "dist" / "wheelhouse"
SITE_PACKAGES = ".python_packages/lib/site-packages"
REQUIRED_FILES = ("host.json", "function_app.py", "requirements.txt")

# The target the Functions host runs on: Linux x86-64, CPython 3.11.
TARGET = (
    "--platform",
    "manylinux2014_x86_64",
    "--only-binary=:all:",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
)

# Never packaged, whatever .funcignore says: local settings, key material, tokens, environments.
ALWAYS_EXCLUDED = (
    "local.settings.json",
    "*refresh-token*",
    ".env",
    ".env.*",
    "*.pem",
    "*.pfx",
    "*.p12",
    "*.key",
    "id_rsa*",
    ".git/",
    ".venv/",
    ".venv-*/",
    "node_modules/",
    "__pycache__/",
    "*.pyc",
)
# Text that must not appear in a packaged app file.
SECRET_TEXT = re.compile(r"AccountKey=|SharedAccessSignature=|-----BEGIN [A-Z ]*PRIVATE KEY-----")
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class PackageError(Exception):
    """The package cannot be built; the message says why."""


# --------------------------------------------------------------------------------------------------
# .funcignore (gitignore syntax without negation)
# --------------------------------------------------------------------------------------------------


def read_ignore_patterns(path: Path) -> list[str]:
    patterns = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("!"):
            raise PackageError(f"{path.name}: negated patterns ('{line}') are not supported")
        patterns.append(line)
    return patterns


def is_ignored(relpath: PurePosixPath, is_dir: bool, patterns: list[str] | tuple[str, ...]) -> bool:
    """True when a path relative to the app root matches one of the gitignore-style patterns."""
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        pat = pattern.rstrip("/")
        if dir_only and not is_dir:
            continue
        if "/" in pat:  # anchored to the root
            if fnmatch.fnmatchcase(relpath.as_posix(), pat.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(relpath.name, pat):
            return True
    return False


def app_files(root: Path, patterns: list[str]) -> list[Path]:
    """Files of the app, relative to root, with ignored files and folders left out."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        rel_dir = PurePosixPath(current.relative_to(root).as_posix())
        kept = []
        for name in sorted(dirnames):
            rel = rel_dir / name if rel_dir.parts else PurePosixPath(name)
            if is_ignored(rel, True, patterns) or is_ignored(rel, True, ALWAYS_EXCLUDED):
                continue
            if (current / name).is_symlink():
                continue
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            rel = rel_dir / name if rel_dir.parts else PurePosixPath(name)
            if is_ignored(rel, False, patterns) or is_ignored(rel, False, ALWAYS_EXCLUDED):
                continue
            found.append(Path(rel.as_posix()))
    return sorted(found, key=lambda p: p.as_posix())


def check_app_files(root: Path, files: list[Path]) -> None:
    names = {f.as_posix() for f in files}
    missing = [name for name in REQUIRED_FILES if name not in names]
    if missing:
        raise PackageError(f"the app root {root} lacks {', '.join(missing)}")
    for rel in files:
        data = (root / rel).read_bytes()
        if SECRET_TEXT.search(data.decode("utf-8", errors="ignore")):
            raise PackageError(f"{rel} looks like it holds a key or connection string; refusing to package it")


# --------------------------------------------------------------------------------------------------
# Dependencies
# --------------------------------------------------------------------------------------------------


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def install_dependencies(requirements: Path, target: Path, wheelhouse: Path) -> None:
    """Install Linux x86-64 CPython 3.11 wheels into target, from the wheelhouse (filled on demand)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    install = (
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        "--no-compile",
        "--target",
        str(target),
        *TARGET,
        "-r",
        str(requirements),
    )
    result = _pip(*install)
    if result.returncode == 0:
        return
    shutil.rmtree(target, ignore_errors=True)
    print(f"downloading wheels into {wheelhouse} ...", flush=True)
    download = _pip("download", "--quiet", "--dest", str(wheelhouse), *TARGET, "-r", str(requirements))
    if download.returncode != 0:
        raise PackageError("pip download failed:\n" + download.stdout + download.stderr)
    result = _pip(*install)
    if result.returncode != 0:
        raise PackageError("pip install failed:\n" + result.stdout + result.stderr)


def dependency_files(site_packages: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(site_packages.rglob("*")):
        rel = path.relative_to(site_packages)
        if path.is_dir() or rel.parts[0] == "bin" or "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        yield path, f"{SITE_PACKAGES}/{rel.as_posix()}"


# --------------------------------------------------------------------------------------------------
# Zip
# --------------------------------------------------------------------------------------------------


def _add(archive: zipfile.ZipFile, source: Path, arcname: str) -> None:
    info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE)
    mode = 0o755 if os.access(source, os.X_OK) else 0o644
    info.external_attr = (0o100000 | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, source.read_bytes())


def build(root: Path, output: Path, wheelhouse: Path) -> list[str]:
    """Build the zip and return its entry names."""
    patterns = read_ignore_patterns(root / ".funcignore")
    files = app_files(root, patterns)
    check_app_files(root, files)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cosell-package-") as tmp:
        site_packages = Path(tmp) / "site-packages"
        install_dependencies(root / "requirements.txt", site_packages, wheelhouse)
        partial = output.with_suffix(".zip.partial")
        names: list[str] = []
        with zipfile.ZipFile(partial, "w") as archive:
            for rel in files:
                _add(archive, root / rel, rel.as_posix())
                names.append(rel.as_posix())
            for source, arcname in dependency_files(site_packages):
                _add(archive, source, arcname)
                names.append(arcname)
        partial.replace(output)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.release.package", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="zip to write (default: %(default)s)")
    parser.add_argument(
        "--wheelhouse", type=Path, default=DEFAULT_WHEELHOUSE, help="wheel cache (default: %(default)s)"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="app root (default: the repository)")
    args = parser.parse_args(argv)
    try:
        names = build(args.root.resolve(), args.output.resolve(), args.wheelhouse.resolve())
    except PackageError as exc:
        print(f"package: {exc}", file=sys.stderr)
        return 1
    app = [n for n in names if not n.startswith(SITE_PACKAGES)]
    size = args.output.stat().st_size
    print(f"{args.output}: {len(app)} app files, {len(names) - len(app)} dependency files, {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
