"""What `pip install .` gets: the wheel (built from the sdist, as pip and PyPI users get it) holds
every file the code loads at run time — admin templates and static files, the widget's static
files, Alembic's migrations and `script.py.mako`, the example flows and orders, `py.typed` — and
nothing a build leaves behind. A file under `supportbot/` or `connectors/` that git tracks and the
wheel lacks is the bug of issue 9 (`serve --demo` died on a missing `templates` directory).

`scripts/quickstart-check` runs the README's quick start from that wheel in a fresh venv (CI runs it).
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import tarfile
import zipfile
from configparser import ConfigParser
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from supportbot._version import __version__

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("supportbot", "connectors")


@dataclass(frozen=True, kw_only=True)
class Built:
    wheel: Path
    sdist: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist, and the wheel built from it, by the pinned build backend (no download)."""
    out = tmp_path_factory.mktemp("dist")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, (
        f"python -m build failed (the dev tools: pip install -c constraints.txt -e '.[dev]'):\n"
        f"{result.stdout}\n{result.stderr}"
    )
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist in {sorted(out.iterdir())}"
    return Built(wheel=wheels[0], sdist=sdists[0])


def _package_files() -> set[str]:
    """Every file of the two packages that the project holds: git's list, so a stray local file is not demanded."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", *PACKAGES], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        # Not a git checkout (an unpacked sdist): the files on disk, less what Python writes there.
        return {
            path.relative_to(ROOT).as_posix()
            for package in PACKAGES
            for path in (ROOT / package).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}
        }
    files = {name for name in listed.split("\0") if name}
    assert files, "git ls-files listed no file under supportbot/ or connectors/"
    return files


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


def test_the_wheel_ships_every_file_of_the_packages(built: Built) -> None:
    expected = _package_files()
    # What the code opens by name at run time: if the list above ever misses these, so does this test.
    assert {
        "supportbot/admin/templates/base.html",
        "supportbot/admin/static/admin.css",
        "supportbot/store/migrations/script.py.mako",
        "supportbot/examples/flows/general.yaml",
        "supportbot/examples/orders.yaml",
        "supportbot/py.typed",
        "connectors/web/static/widget.js",
        "connectors/web/static/demo.html",
    } <= expected
    missing = sorted(expected - _wheel_names(built.wheel))
    assert not missing, f"{built.wheel.name} lacks {len(missing)} file(s) of the packages: {missing}"


def test_the_wheel_holds_no_build_leftovers_and_nothing_outside_the_packages(built: Built) -> None:
    names = _wheel_names(built.wheel)
    leftovers = sorted(
        name
        for name in names
        if "__pycache__" in PurePosixPath(name).parts or name.endswith((".pyc", ".pyo", ".db", ".db-wal", ".db-shm"))
    )
    assert not leftovers, f"{built.wheel.name} ships files a run leaves behind: {leftovers}"
    dist_info = f"supportbot-{__version__}.dist-info"
    outside = sorted(name for name in names if PurePosixPath(name).parts[0] not in {*PACKAGES, dist_info})
    assert not outside, f"{built.wheel.name} ships files outside {PACKAGES}: {outside}"


def test_the_wheel_declares_the_command_the_connector_and_the_version(built: Built) -> None:
    dist_info = f"supportbot-{__version__}.dist-info"
    with zipfile.ZipFile(built.wheel) as archive:
        entry_points = ConfigParser()
        entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())
        metadata = email.parser.Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
    assert entry_points["console_scripts"]["supportbot"].strip() == "supportbot.cli:main"
    assert entry_points["supportbot.connectors"]["web"].strip() == "connectors.web:CONNECTOR"
    assert entry_points["supportbot.connectors"]["slack"].strip() == "connectors.slack:CONNECTOR"
    assert metadata["Name"] == "supportbot" and metadata["Version"] == __version__
    requires = " ".join(metadata.get_all("Requires-Dist") or [])
    for dependency in ("aiohttp", "alembic", "click", "jinja2", "sqlalchemy"):
        assert dependency in requires.lower(), f"METADATA does not require {dependency}: {requires}"


def test_the_sdist_holds_the_packages_and_what_the_readme_names(built: Built) -> None:
    prefix = f"supportbot-{__version__}/"
    with tarfile.open(built.sdist) as archive:
        names = {member.name.removeprefix(prefix) for member in archive.getmembers() if member.isfile()}
    missing = sorted((_package_files() | {"pyproject.toml", "README.md", "config.example.yaml"}) - names)
    assert not missing, f"{built.sdist.name} lacks {missing}"
