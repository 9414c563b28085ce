"""docs/testing.md is a working project: every YAML and Python example is a file of it, and its tests pass.

Each fenced ``yaml`` or ``python`` block starts with ``# PATH``, the file it is; the project is those
files plus copies of the example flows (as ``supportbot init`` makes them). The test files among
them must all pass, the shell commands shown must run, and the outputs shown must be what
``supportbot test`` prints (durations aside).
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from supportbot.config import EXAMPLE_FLOWS_DIR
from supportbot.testing import FakeLLMServer
from tests.flowtest.conftest import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
DURATION = re.compile(r"\d+(\.\d+)? (ms|s)\b")


def blocks(kind: str) -> list[str]:
    return [body for language, body in FENCE.findall(DOC.read_text(encoding="utf-8")) if language == kind]


def files() -> dict[str, str]:
    """The project's files from the doc: ``# PATH`` blocks by path."""
    found = {}
    for body in blocks("yaml") + blocks("python"):
        first = body.splitlines()[0]
        assert first.startswith("# "), f"an example in docs/testing.md does not start with '# PATH':\n{body}"
        found[first.removeprefix("# ").strip()] = body
    return found


def text_block(starting: str) -> str:
    (found,) = [body for body in blocks("text") if body.startswith(starting)]
    return found


def same(output: str) -> str:
    """Output with durations and table spacing evened out."""
    return "\n".join(" ".join(DURATION.sub("T", line).split()) for line in output.strip().splitlines())


@pytest.fixture
def doc_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(EXAMPLE_FLOWS_DIR, tmp_path / "flows")
    for path, body in files().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(body, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    for name in ("SUPPORTBOT_CONFIG", "SUPPORTBOT_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_the_examples_are_files_of_one_project() -> None:
    paths = set(files())
    assert {"config.yaml", "shop_tools.py", "flows/billing.yaml", ".github/workflows/flow-tests.yml"} <= paths
    assert {p for p in paths if p.startswith("tests/")} == {
        "tests/order_status.yaml", "tests/returns.yaml", "tests/billing.yaml"
    }  # fmt: skip


def test_every_test_file_of_the_doc_passes(doc_project: Path) -> None:
    cases = sum(len(yaml.safe_load(body)["cases"]) for path, body in files().items() if path.startswith("tests/"))
    result = cli("test")
    assert result.exit_code == 0, result.output
    assert f"OK: {cases} cases passed" in result.stdout
    assert not (doc_project / "supportbot.db").exists(), "a test opened the config's database"


def test_the_output_shown_is_the_output(doc_project: Path) -> None:
    shown = text_block("$ supportbot test tests/order_status.yaml")
    command, _, output = shown.partition("\n")
    result = cli(*shlex.split(command.removeprefix("$ supportbot ")))
    assert result.exit_code == 0
    assert same(result.stdout) == same(output)


def test_the_failure_shown_is_the_failure(doc_project: Path) -> None:
    test = doc_project / "tests" / "order_status.yaml"
    test.write_text(test.read_text().replace("A1001 has shipped", "A1001 is being packed"))
    result = cli("test", "tests/order_status.yaml", "-k", "status")
    assert result.exit_code == 1
    assert same(text_block("FAIL ")) in same(result.stdout)


def test_the_problems_shown_are_the_problems(doc_project: Path) -> None:
    test = doc_project / "tests" / "returns.yaml"
    original = test.read_text()
    broken = original.replace("called: [transfer_to_returns]", "calld: [transfer_to_returns]", 1)
    broken = broken.replace("not_called: [handoff_to_human]", "not_called: [handof_to_human]", 1)
    assert broken.count("calld") == 1 and "handof_" in broken
    test.write_text(broken)
    result = cli("test")
    assert result.exit_code == 2
    assert result.stderr.strip() == text_block("tests/returns.yaml").strip()


def test_the_commands_shown_run(doc_project: Path) -> None:
    commands = [line.split("#")[0].strip() for body in blocks("sh") for line in body.splitlines()]
    commands = [c for c in commands if c.startswith("supportbot test") and "--live" not in c]
    assert len(commands) >= 5
    for command in commands:
        result = cli(*shlex.split(command)[1:])
        assert result.exit_code == 0, f"{command}: {result.output}"


async def test_the_live_command_shown_runs(doc_project: Path) -> None:
    (command,) = [line for body in blocks("sh") for line in body.splitlines() if "--live" in line]
    async with FakeLLMServer() as fake:
        with (doc_project / "config.yaml").open("a") as config:
            config.write(f"llm: {{base_url: {fake.base_url}, model: fake, retries: {{max_retries: 0}}}}\n")
        result = await asyncio.to_thread(cli, *shlex.split(command)[1:])
    # The fake model answers every request with the same text: the cases run, and most fail.
    assert result.exit_code == 1 and "(live: fake, 5 runs each)" in result.stdout
    assert re.search(r"\d/5 runs passed", result.stdout)


def test_the_ci_workflow_runs_the_tests_and_keeps_the_report(doc_project: Path) -> None:
    workflow = yaml.safe_load(files()[".github/workflows/flow-tests.yml"])
    steps = workflow["jobs"]["flows"]["steps"]
    (run,) = [step["run"] for step in steps if str(step.get("run", "")).startswith("supportbot test")]
    (upload,) = [step for step in steps if step.get("uses", "").startswith("actions/upload-artifact")]
    result = cli(*shlex.split(run)[1:])
    assert result.exit_code == 0, result.output
    assert (doc_project / upload["with"]["path"]).is_file() and upload["if"] == "always()"
