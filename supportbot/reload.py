"""Hot reload: load the flows and tools again, check them, and swap them into the running engine.

``supportbot serve --reload`` watches the files by polling them (``Watcher``; no dependency), and a
SIGHUP asks for a reload at any time. ``Reloader.reload`` forgets the user's tools modules (those
of ``tools.modules``, the files of ``tools/`` directories, and the modules of the user's they
import from the same directories; never supportbot's own, the standard library's or an installed
package's), then imports them and loads the flows again in a thread, exactly as a start does. If
everything checks, the engine serves the new flows and tools from the next turn on
(``Engine.swap``); a running turn finishes on what it started with. If anything is wrong, every
problem is logged as ``file:line: key: problem; fix``, the old modules are put back and the
previous version serves on. The configuration file is not read again: a change to it needs a
restart.

The user's modules are imported again in a worker thread while turns run on the event loop: their
module-level code must not need the event loop (no ``asyncio.get_running_loop()``, no task or
aiohttp session made at import; make those inside the tool, which runs on the loop), and a tool
of the previous version may run meanwhile, so module-level state is not shared between versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from supportbot.config import EXAMPLE_FLOWS_DIR, Config
from supportbot.engine import Snapshot
from supportbot.errors import ConfigError
from supportbot.flows import Flows
from supportbot.runtime import Runtime, load_tools_and_flows, project_dir, tools_dirs
from supportbot.tools import ToolRegistry
from supportbot.tools.registry import LOCAL_PACKAGE

__all__ = ["POLL_INTERVAL_S", "SETTLE_S", "Outcome", "Reloader", "Watcher", "user_modules"]

log = logging.getLogger("supportbot.reload")

POLL_INTERVAL_S = 1.0
"""How often the watcher looks at the files."""
SETTLE_S = 0.3
"""How long the files must stay unchanged before a reload: an editor writes a file in several steps."""
_OWN_PACKAGES = frozenset({"supportbot", "connectors"})
_SCRIPTS = frozenset({"__main__", "__mp_main__"})
"""The program's launch script (``supportbot`` in a virtualenv's ``bin/``, ``python -m``): never imported again."""

Stat = tuple[int, int]
"""A file's modification time (ns) and size."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Outcome:
    """What one reload did.

    Attributes:
        ok: whether the new flows and tools were swapped in; if not, the previous ones serve on.
        reason: what asked for it, as logged (``changed: flows/returns.yaml``, ``on SIGHUP``).
        problems: why it was refused, one ``file:line: key: problem; fix`` each.
        snapshot: what serves after the reload: the new snapshot, or the previous one when refused.
    """

    ok: bool
    reason: str
    problems: tuple[str, ...]
    snapshot: Snapshot


class Reloader:
    """Reloads a runtime's flows and tools, one reload at a time.

    ``reload`` runs one now (waiting for one under way to end); ``request`` (SIGHUP, the watcher)
    asks for one without waiting: requests that come while a reload runs make one more reload
    after it, however many they are.

    Args:
        runtime: the running supportbot; its engine gets the new flows and tools.
        on_outcome: called with each reload's ``Outcome`` (metrics, tests).
    """

    def __init__(self, runtime: Runtime, *, on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self.runtime = runtime
        self.on_outcome = on_outcome
        config = runtime.config
        self._config_file = config.source.resolve() if config.source is not None else None
        self._tools_dirs = tools_dirs(config)
        flows_dir = config.flows.dir.resolve()
        # The example flows are part of the installed package: they change with an upgrade, which restarts.
        # ``flows_dir`` is None then: no flow file is watched.
        self.flows_dir = flows_dir if flows_dir != EXAMPLE_FLOWS_DIR.resolve() else None
        self._module_files = _files(user_modules(config))
        self._config_stat = _stat(self._config_file)
        self._lock = asyncio.Lock()
        self._wanted = asyncio.Event()
        self._reasons: dict[str, None] = {}  # an ordered set
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: Watcher | None = None

    # -- reloading -------------------------------------------------------------------------------

    async def reload(self, *, reason: str = "") -> Outcome:
        """Load the flows and tools again and swap them in if they check; else keep the ones serving.

        Args:
            reason: what asked for it, for the log (``changed: flows/returns.yaml``).
        """
        async with self._lock:
            engine = self.runtime.engine
            previous = engine.snapshot
            self._warn_if_config_changed()
            try:
                tools, flows, modules = await asyncio.to_thread(_load_again, self.runtime.config)
            except ConfigError as exc:
                problems = tuple(line for line in str(exc).splitlines() if line.strip())
            except Exception as exc:  # a bug while loading must not stop the server
                log.exception("the reload failed")
                problems = (f"the reload failed: {type(exc).__name__}: {exc}",)
            else:
                snapshot = engine.swap(flows, tools)
                self._watch_modules(modules)
                log.info("reloaded: flows %s; %d tools%s", ", ".join(sorted(flows)), len(tools),
                         f" ({reason})" if reason else "")  # fmt: skip
                return self._report(Outcome(ok=True, reason=reason, problems=(), snapshot=snapshot))
            for problem in problems:
                log.error("%s", problem)
            log.error("reload refused%s; still serving the previous version (loaded at %s)",
                      f" ({reason})" if reason else "", previous.loaded_at.isoformat(timespec="seconds"))  # fmt: skip
            return self._report(Outcome(ok=False, reason=reason, problems=problems, snapshot=previous))

    def request(self, reason: str = "") -> None:
        """Ask for a reload and return at once; it runs after the one under way, if any (``start``)."""
        if reason:
            self._reasons[reason] = None
        self._wanted.set()

    def _watch_modules(self, modules: list[Path]) -> None:
        """Watch the user's modules a reload imported; one it started or stopped watching is no change.

        Runs under the lock the watcher polls under: no poll sees the new list before its baseline is taken.
        """
        globbed = set(self._globbed())
        before, after = set(self._module_files) - globbed, set(modules) - globbed
        self._module_files = modules
        if self._watcher is not None:
            self._watcher.rebase(watched=after - before, unwatched=before - after)

    def _report(self, outcome: Outcome) -> Outcome:
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        return outcome

    def _warn_if_config_changed(self) -> None:
        stat = _stat(self._config_file)
        if stat != self._config_stat:
            self._config_stat = stat
            log.warning(
                "%s changed: the configuration is not reloaded (only the flows and tools are); "
                "restart supportbot to apply it",
                _display(self._config_file) if self._config_file is not None else "the configuration file",
            )

    # -- running ---------------------------------------------------------------------------------

    def start(self, *, watch: bool, interval: float = POLL_INTERVAL_S, settle: float = SETTLE_S) -> None:
        """Run the reloads ``request`` asks for from now on, and with ``watch`` watch the files too.

        Args:
            watch: poll ``watched_files`` every ``interval`` seconds and reload once a change has
                settled for ``settle`` seconds.
        """
        self._tasks.append(asyncio.create_task(self._serve_requests(), name="supportbot-reload"))
        if watch:
            # The files as they are now, before this returns: an edit made afterwards is a change.
            watcher = Watcher(self.watched_files, settle=settle, now=asyncio.get_running_loop().time())
            self._watcher = watcher
            self._tasks.append(asyncio.create_task(self._watch(watcher, interval), name="supportbot-watch"))

    async def aclose(self) -> None:
        """Stop watching and reloading; a load under way in its thread is left to end by itself."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _serve_requests(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            reason = "; ".join(self._reasons)
            self._reasons.clear()
            await self.reload(reason=reason)

    async def _watch(self, watcher: Watcher, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # While a change settles, look more often: the reload comes about ``settle`` after the last write.
            await asyncio.sleep(min(interval, watcher.settle / 3) if watcher.pending else interval)
            async with self._lock:  # not while a reload changes what is watched (``_watch_modules``)
                changed = await asyncio.to_thread(watcher.poll, loop.time())
            if self._config_file in changed:
                self._warn_if_config_changed()
            files = [_display(path) for path in changed if path != self._config_file]
            if files:
                self.request("changed: " + ", ".join(files))

    def watched_files(self) -> list[Path]:
        """The files a change of which reloads: the flow files, the user's tools modules and the config file.

        Globbed again at each call, so that a new flow file or tools file is noticed.
        """
        files = self._globbed()
        files.extend(self._module_files)
        if self._config_file is not None:
            files.append(self._config_file)
        return list(dict.fromkeys(files))

    def _globbed(self) -> list[Path]:
        """The flow files and the files of the tools directories."""
        files: list[Path] = []
        if self.flows_dir is not None:
            files.extend(_listed(self.flows_dir, (".yaml", ".yml")))
        for directory in self._tools_dirs:
            files.extend(_listed(directory, (".py",)))
        return files


class Watcher:
    """Notices changed files by polling their modification time and size, and reports a change once settled.

    Args:
        files: the files to watch, asked again at each poll (a new file is a change too).
        settle: seconds the files must stay as they are before a change is reported.
        now: the current time on the clock ``poll`` is given.
    """

    def __init__(self, files: Callable[[], Iterable[Path]], *, settle: float = SETTLE_S, now: float = 0.0) -> None:
        self._files = files
        self.settle = settle
        self._seen = self._scan()  # as last reported
        self._latest = self._seen  # as last scanned
        self._since = now  # when ``_latest`` was first scanned

    @property
    def pending(self) -> bool:
        """Whether a change was seen that is not reported yet (it has not settled)."""
        return self._latest != self._seen

    def poll(self, now: float) -> list[Path]:
        """Look at the files; the changed, new and removed ones once nothing changed for ``settle`` s, else none."""
        current = self._scan()
        if current != self._latest:
            self._latest, self._since = current, now
        if current == self._seen or now - self._since < self.settle:
            return []
        changed = sorted(p for p in self._seen.keys() | current.keys() if self._seen.get(p) != current.get(p))
        self._seen = current
        return changed

    def rebase(self, *, watched: Iterable[Path] = (), unwatched: Iterable[Path] = ()) -> None:
        """Files that ``files`` starts or stops listing, taken as they are now: neither is a change.

        Call it between polls, never while one runs.
        """
        seen, latest = dict(self._seen), dict(self._latest)
        for path in watched:
            stat = _stat(path)
            if stat is not None:
                seen[path] = latest[path] = stat
        for path in unwatched:
            seen.pop(path, None)
            latest.pop(path, None)
        self._seen, self._latest = seen, latest

    def _scan(self) -> dict[Path, Stat]:
        found: dict[Path, Stat] = {}
        for path in self._files():
            stat = _stat(path)
            if stat is not None:
                found[path] = stat
        return found


# -- the user's modules ------------------------------------------------------------------------------


def user_modules(config: Config) -> dict[str, ModuleType]:
    """The imported modules a reload imports again: the user's own, where the tools come from.

    Those are the modules of ``tools.modules``, the files of the ``tools/`` directories, and every
    module in the directories of those (a helper a tools module imports), except the launch script
    (``__main__``), supportbot's own, and those of Python's installation (``_foreign_dirs``: the
    standard library, installed packages, a virtualenv even inside the project).
    """
    roots = tools_dirs(config)
    foreign = _foreign_dirs((Path.cwd().resolve(), project_dir(config).resolve()))
    for name in config.tools.modules:
        module = sys.modules.get(name)
        file = _user_file(name, module, foreign) if module is not None else None
        if file is not None:
            roots.append(file.parent)
    found: dict[str, ModuleType] = {}
    for name, module in list(sys.modules.items()):
        file = _user_file(name, module, foreign)
        if file is not None and any(file.is_relative_to(root) for root in roots):
            found[name] = module
    return found


def _load_again(config: Config) -> tuple[ToolRegistry, Flows, list[Path]]:
    """Forget the user's modules and load the tools and flows again; on a failure the old modules are put back.

    Runs in a thread: importing and checking take long enough to hold up every running turn.
    """
    old = user_modules(config)
    for name, module in old.items():
        if sys.modules.get(name) is module:
            del sys.modules[name]
        _drop_bytecode(module)
    # The package of the tools directories' files goes too: it holds each file imported as an attribute,
    # which ``from . import helper`` would take instead of importing the helper again.
    package = sys.modules.pop(LOCAL_PACKAGE, None)
    importlib.invalidate_caches()  # a new file in a directory searched before is found
    try:
        tools, flows = load_tools_and_flows(config)
    except BaseException:
        sys.modules.update(old)  # what serves on is the old version: its modules are the ones to import
        if package is not None:
            sys.modules[LOCAL_PACKAGE] = package
        else:
            sys.modules.pop(LOCAL_PACKAGE, None)
        raise
    return tools, flows, _files(user_modules(config))


def _drop_bytecode(module: ModuleType) -> None:
    """Remove a module's cached bytecode: it is keyed by the source's mtime in whole seconds and its size,
    so an edit within the same second that keeps the size would load the old code."""
    file = getattr(module, "__file__", None)
    if isinstance(file, str) and file.endswith(".py"):
        with contextlib.suppress(OSError, NotImplementedError, ValueError):
            Path(importlib.util.cache_from_source(file)).unlink(missing_ok=True)


def _user_file(name: str, module: ModuleType, foreign: tuple[str, ...]) -> Path | None:
    """The file of a module of the user's; None for the launch script, supportbot's own, the standard library's,
    an installed one, or any other under ``foreign`` (``_foreign_dirs``)."""
    if name in _SCRIPTS or name.partition(".")[0] in _OWN_PACKAGES:
        return None
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or "site-packages" in file or "dist-packages" in file:
        return None
    if file.startswith(foreign):  # most modules: decided without a look at the file system
        return None
    path = Path(file).resolve()
    return None if str(path).startswith(foreign) else path


def _foreign_dirs(homes: tuple[Path, ...]) -> tuple[str, ...]:
    """The directories of Python's installation, as written and resolved, ending in a separator.

    The standard library's, installed packages' and scripts' (``bin/``), and ``sys.prefix`` and
    ``sys.exec_prefix`` (a virtualenv, even one inside the project) unless one holds a directory of
    ``homes``: a project in ``/usr/local/app`` with Python's prefix ``/usr/local`` is the user's.
    """
    paths = sysconfig.get_paths()
    found = [Path(paths[n]) for n in ("stdlib", "platstdlib", "purelib", "platlib", "scripts") if n in paths]
    for prefix in {Path(sys.prefix), Path(sys.exec_prefix)}:
        if not any(home.is_relative_to(prefix.resolve()) for home in homes):
            found.append(prefix)
    return tuple(dict.fromkeys(os.path.join(p, "") for path in found for p in (str(path), str(path.resolve()))))


def _files(modules: dict[str, ModuleType]) -> list[Path]:
    return sorted({Path(m.__file__).resolve() for m in modules.values() if isinstance(m.__file__, str)})


def _listed(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.suffix in suffixes and not p.name.startswith("."))
    except OSError:  # not there (yet): nothing to watch in it
        return []


def _stat(path: Path | None) -> Stat | None:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _display(path: Path) -> str:
    """A path as short as possible: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
