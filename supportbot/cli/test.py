"""``supportbot test``: the flow tests (YAML cases under ``tests/``), offline and deterministic, or ``--live``.

Exit status: 0 when every case passed, 1 when one failed, 2 for a usage error or invalid test
files (every problem listed at once), or a project that does not load.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from supportbot.cli._common import config_option, echo

if TYPE_CHECKING:
    from supportbot.flowtest.records import CaseResult

# The engine and the runner are imported inside the command, so that `supportbot --help` starts at once.


_NO_LIVE_MODEL = (
    "--live needs a model, and none is connected: set SUPPORTBOT_LLM_API_KEY (or llm.api_key in config.yaml) to "
    "the key of {base_url}, or leave out --live to run the tests offline (model: scripts and the demo model)."
)


class _Invalid(click.ClickException):
    """The tests cannot run as given: exit 2, like a usage error."""

    exit_code = 2


@click.command(name="test")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@config_option
@click.option("-k", "keyword", metavar="SUBSTRING", help="Run only the cases whose 'file › name' contains this.")
@click.option(
    "--junit-xml", "junit", type=click.Path(dir_okay=False, path_type=Path), help="Also write JUnit XML here (CI)."
)
@click.option("--live", is_flag=True, help="Ask the configured model instead of the scripts and the demo model.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True, help="Run each case N times.")
@click.option(
    "--min-pass-rate",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="The share of a case's runs that must pass (with --repeat).",
)
@click.option("-v", "--verbose", is_flag=True, help="Show the transcript of passing cases too.")
def run_tests(
    paths: tuple[Path, ...],
    config_path: str | None,
    keyword: str | None,
    junit: Path | None,
    live: bool,
    repeat: int,
    min_pass_rate: float,
    verbose: bool,
) -> None:
    """Run flow tests: the YAML files under PATH… (default: tests/ beside the config file).

    Each case runs offline and deterministically: a fresh SQLite database, the fixtures, the project's
    real tools, and scripted model answers (model:) or the offline demo model. See docs/testing.md.
    """
    code = asyncio.run(
        _main(paths, config_path, keyword=keyword, junit=junit, live=live, repeat=repeat,
              min_pass_rate=min_pass_rate, verbose=verbose)
    )  # fmt: skip
    click.get_current_context().exit(code)


async def _main(
    paths: tuple[Path, ...],
    config_path: str | None,
    *,
    keyword: str | None,
    junit: Path | None,
    live: bool,
    repeat: int,
    min_pass_rate: float,
    verbose: bool,
) -> int:
    from supportbot._yaml import Problems
    from supportbot.config import load_config
    from supportbot.errors import SupportbotError
    from supportbot.flowtest.load import find_files, load_files, shown_path
    from supportbot.flowtest.report import case_report, check_writable, summary, write_junit_xml
    from supportbot.flowtest.run import open_runner, selected
    from supportbot.llm.base import LLM
    from supportbot.llm.client import OpenAICompatibleLLM
    from supportbot.runtime import load_tools_and_flows, project_dir

    if junit is not None and (why := check_writable(junit)) is not None:
        raise _Invalid(f"--junit-xml {why}; no test ran")
    try:
        config = load_config(config_path)
        tools, flows = load_tools_and_flows(config)
    except SupportbotError as exc:
        raise _Invalid(f"the project does not load, so no test ran:\n{exc}") from None
    default = project_dir(config) / "tests"
    problems = Problems()
    found = load_files(
        find_files(list(paths), default=default, problems=problems),
        tools=tools.names(),
        flows=list(flows),
        problems=problems,
    )
    for note in found.notes:
        echo(f"note: {note}", dim=True, err=True)
    if problems:
        unique = sorted(set(problems.items), key=lambda p: (p.file, p.line or 0, p.key, p.message))
        for problem in unique:
            echo(problem, err=True)
        echo(
            f"{len(unique)} problem{'s' if len(unique) > 1 else ''} in the test files; no test ran", fg="red", err=True
        )
        return 2
    if not found.files:
        where = ", ".join(str(p) for p in paths) if paths else shown_path(default)
        raise _Invalid(f"no test files in {where}: a test file is YAML with a top-level cases: (see docs/testing.md)")
    model: LLM | None = None
    if live:
        if config.llm.key_missing:
            raise _Invalid(_NO_LIVE_MODEL.format(base_url=config.llm.base_url))
        model = OpenAICompatibleLLM(config.llm)
    count = sum(selected(file, case.name, keyword) for file in found.files for case in file.spec.cases)
    if not count:
        raise _Invalid(f"no case matches -k {keyword!r}; -k selects by 'file › case name', ignoring case")
    how = f"live: {config.llm.model}" if live else "offline: model: scripts and the demo model"
    runs = f", {repeat} runs each" if repeat > 1 else ""
    echo(f"{count} case{'s' if count > 1 else ''} in {len(found.files)} file"
         f"{'s' if len(found.files) > 1 else ''} ({how}{runs})", dim=True)  # fmt: skip
    started = time.perf_counter()
    try:
        async with open_runner(config, tools=tools, flows=flows, live=model) as runner:
            results = await runner.run(
                found.files, repeat=repeat, min_pass_rate=min_pass_rate, keyword=keyword, on_result=_progress
            )
    finally:
        if model is not None:
            await model.aclose()
    elapsed = (time.perf_counter() - started) * 1000
    for result in results:
        if not result.passed or verbose:
            echo()
            echo(case_report(result))
    echo()
    echo(summary(results, elapsed_ms=elapsed), bold=True)
    if junit is not None:
        try:
            write_junit_xml(junit, results)
        except OSError as exc:  # checked before the run, but the disk may have changed since
            raise _Invalid(f"--junit-xml {junit}: cannot write the report ({exc.strerror}); check the path") from None
        echo(f"JUnit XML: {junit}", dim=True)
    return 0 if all(result.passed for result in results) else 1


def _progress(result: CaseResult) -> None:
    from supportbot.flowtest.report import progress_line

    echo(progress_line(result), fg="green" if result.passed else "red")
