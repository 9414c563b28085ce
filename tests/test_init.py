"""``supportbot init``: a new project that works at once, and never overwrites anything.

The project's commands run as real processes in the new directory, as a user runs them: the
project's ``tools`` module is imported there, never into this test process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import jsonschema
import pytest
import yaml

from supportbot.config import EXAMPLE_FLOWS_DIR
from supportbot.scaffold import TEMPLATE_DIR, plan_project
from tests.server_process import free_port, stop_server

REPO = Path(__file__).resolve().parent.parent
SCHEMA_LINE = "# yaml-language-server: $schema="


@dataclass
class Run:
    code: int
    out: str
    err: str


def _environment() -> dict[str, str]:
    # No SUPPORTBOT_* of the caller (a database URL, a config file) may reach the new project.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTBOT_")}
    return environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def supportbot(*args: str, cwd: Path, stdin: str = "") -> Run:
    command = [sys.executable, "-m", "supportbot", *args]
    done = subprocess.run(
        command, cwd=cwd, env=_environment(), input=stdin, capture_output=True, text=True, timeout=120
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project made by ``supportbot init demo``."""
    run = supportbot("init", "demo", cwd=tmp_path)
    assert run.code == 0, run.err
    return tmp_path / "demo"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


# -- what init writes and prints -------------------------------------------------------------------


def test_init_writes_the_project_and_says_what_next(tmp_path: Path) -> None:
    run = supportbot("init", "demo", cwd=tmp_path)
    assert run.code == 0, run.err
    written = snapshot(tmp_path / "demo")
    assert set(written) == {str(f.path) for f in plan_project()}
    assert {"config.yaml", "tools.py", "orders.yaml", "README.md", ".gitignore"} <= set(written)
    assert {f"flows/{p.name}" for p in EXAMPLE_FLOWS_DIR.glob("*.yaml")} <= set(written)
    for name in written:
        assert f"demo/{name}" in run.out
    assert "cd demo" in run.out and "supportbot test" in run.out
    assert b"supportbot.db*" in written[".gitignore"] and b"__pycache__/" in written[".gitignore"]


def test_init_without_a_directory_writes_into_the_working_directory(tmp_path: Path) -> None:
    run = supportbot("init", cwd=tmp_path)
    assert run.code == 0, run.err
    assert set(snapshot(tmp_path)) == {str(f.path) for f in plan_project()}
    assert "cd " not in run.out and "the working directory" in run.out


def test_init_into_a_directory_with_other_files_keeps_them(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "ideas.md").write_text("a billing flow\n")
    run = supportbot("init", ".", cwd=tmp_path)
    assert run.code == 0, run.err
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert (tmp_path / "flows" / "ideas.md").read_text() == "a billing flow\n"
    assert (tmp_path / "flows" / "general.yaml").is_file()


def test_init_twice_refuses_and_changes_nothing(project: Path) -> None:
    config = project / "config.yaml"
    config.write_text(config.read_text() + "# my change\n")
    (project / "tests" / "general.yaml").unlink()  # one file missing: still nothing is written
    before = snapshot(project)
    run = supportbot("init", "demo", cwd=project.parent)
    assert run.code == 1
    assert "nothing was written" in run.err
    assert "demo/config.yaml" in run.err and "demo/flows/returns.yaml" in run.err
    assert "demo/tests/general.yaml" not in run.err
    assert snapshot(project) == before


def test_init_refuses_a_file_where_a_directory_must_be(tmp_path: Path) -> None:
    (tmp_path / "tests").write_text("not a directory\n")
    run = supportbot("init", cwd=tmp_path)
    assert run.code == 1
    assert "tests" in run.err and "nothing was written" in run.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tests"]


# -- the project works at once --------------------------------------------------------------------


def test_the_project_validates(project: Path) -> None:
    run = supportbot("validate", cwd=project)
    assert run.code == 0, run.err
    assert f"config: {project / 'config.yaml'}" in run.out
    assert f"database: sqlite+aiosqlite:///{project / 'supportbot.db'}" in run.out
    assert "shipping_cost" in run.out.split("tools: ")[1].splitlines()[0]
    assert f"flows: {project / 'flows'}" in run.out
    assert "flow general (default): tools shipping_cost, create_ticket" in run.out


def test_chat_demo_calls_the_custom_tool(project: Path) -> None:
    run = supportbot("chat", "--demo", cwd=project, stdin="How much is shipping to Canada?\n")
    assert run.code == 0, run.err
    assert '⚙ shipping_cost({"country": "CA"' in run.err
    assert "✓ shipping_cost" in run.err
    assert "Canada: $14.95, 5-8 business days" in run.out


def test_the_flow_tests_pass(project: Path) -> None:
    run = supportbot("test", cwd=project)
    assert run.code == 0, run.out + run.err
    for name in ("shipping_cost answers for Canada", "a verified customer gets their order's status"):
        assert name in run.out


@pytest.fixture
async def served(project: Path) -> AsyncIterator[str]:
    """``supportbot serve --demo`` in the project, on a free port; its URL once it says it is serving."""
    port = free_port()
    command = [sys.executable, "-m", "supportbot", "serve", "--demo", "--port", str(port)]
    process = await asyncio.to_thread(
        subprocess.Popen, command, cwd=project, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        lines = []
        while not any("is serving on" in line for line in lines):
            line = await asyncio.wait_for(asyncio.to_thread(process.stderr.readline), 60)
            assert line, f"serve --demo exited: {''.join(lines)}"
            lines.append(line)
        yield f"http://127.0.0.1:{port}"
    finally:
        await stop_server(process)


async def test_serve_demo_is_ready(served: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{served}/readyz") as response:
        assert response.status == 200


# -- the files ---------------------------------------------------------------------------------------


def _schema_of(path: Path) -> Path:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(SCHEMA_LINE), f"{path}: the first line is not the schema comment"
    return (path.parent / first.removeprefix(SCHEMA_LINE)).resolve()


def test_the_files_validate_against_their_schemas(project: Path) -> None:
    kinds = {"config.yaml": "config", "flows": "flow", "tests": "test"}
    checked = []
    for path in sorted(project.rglob("*.yaml")):
        kind = kinds.get(path.relative_to(project).parts[0])
        if kind is None:
            continue
        schema_file = _schema_of(path)
        assert schema_file == project / ".schemas" / f"{kind}.schema.json"
        schema = json.loads(schema_file.read_text(encoding="utf-8"))
        jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), schema)
        checked.append(path.relative_to(project).as_posix())
    assert "config.yaml" in checked and "flows/general.yaml" in checked and "tests/general.yaml" in checked
    assert len(checked) == 1 + 3 + len(list((TEMPLATE_DIR / "tests").glob("*.yaml")))


def test_the_scaffold_config_differs_from_the_example_only_where_the_project_needs() -> None:
    # Options the example config gains must reach new projects too: every line of the example's settings
    # is in the scaffold's, except the ones the project sets to its own files.
    def settings(path: Path) -> set[str]:
        lines = path.read_text(encoding="utf-8").splitlines()
        return {line.split("#")[0].rstrip() for line in lines if line.split("#")[0].strip()}

    own = {"  dir: null", "  modules: []", "  path: null"}
    missing = settings(REPO / "config.example.yaml") - settings(TEMPLATE_DIR / "config.yaml")
    assert missing == own


def test_every_template_is_part_of_the_project() -> None:
    planned = {str(f.path) for f in plan_project()}
    templates = {
        p.relative_to(TEMPLATE_DIR).as_posix() for p in TEMPLATE_DIR.rglob("*") if p.is_file() and p.suffix != ".pyc"
    }
    assert {".gitignore" if t == "gitignore" else t for t in templates} <= planned


def test_the_custom_tool_is_wired_into_the_general_flow() -> None:
    general = next(f.text for f in plan_project() if str(f.path) == "flows/general.yaml")
    flow = yaml.safe_load(general)
    assert flow["tools"][0] == "shipping_cost"
    assert "call shipping_cost" in flow["system_prompt"]
    assert [hint.get("call") or hint.get("after") for hint in flow["demo"]] == ["shipping_cost"] * 5
