"""``Dovecot``: Debian's IMAP server (``dovecot-imapd``) on 127.0.0.1, with its own config, ports and maildir.

Each instance writes a minimal ``dovecot.conf`` into a temporary directory (``base_dir``, ``state_dir``, log,
users file and maildirs all live there, so a system Dovecot, if one runs, does not matter), starts
``dovecot -F -c <conf>`` as a child in its own process group and waits for the ``* OK`` greeting. Plain IMAP
(STARTTLS offered) is on ``port``, implicit TLS on ``ssl_port``, with the test CA's certificate (``ca_file``);
LOGIN and AUTH PLAIN are allowed without TLS, so tests may use any of the three.

As root, Dovecot's processes run as Debian's ``dovecot`` user (mail too: Dovecot refuses uid 0 for mail) and
logins as ``dovenull``; as another user, everything runs as that user (Dovecot's rootless mode, no chroots).

Example::

    async with Dovecot() as imap:
        uid = await imap.append(raw_mail)
        ...  # aioimaplib.IMAP4(imap.host, imap.port), login(imap.username, imap.password)
        assert "\\\\Seen" in await imap.flags(uid)
        await imap.restart()  # clients are disconnected; the maildir stays
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import imaplib
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from connectors.email.testing.certs import server_certs

DEFAULT_USER = "help@acme.example"
DEFAULT_PASSWORD = "secret"

_PORT_TRIES = 5  # fresh free ports picked when another process took one between the pick and Dovecot's bind
_INDEX_FILES = ("dovecot-uidlist", "dovecot.index", "dovecot.index.log", "dovecot.index.cache", "dovecot.list.index",
                "dovecot.list.index.log")  # fmt: skip


class DovecotError(RuntimeError):
    """Dovecot did not start, or an IMAP command of the harness failed; the message holds the log's tail."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredMail:
    """A message in a mailbox, as IMAP reports it.

    Attributes:
        uid: its UID in the mailbox.
        flags: its flags (``\\Seen``, ``\\Flagged``, keywords), without the session-bound ``\\Recent``.
        raw: its bytes (``BODY[]``; IMAP's CRLF line ends).
    """

    uid: int
    flags: frozenset[str]
    raw: bytes


def find_binary() -> str | None:
    """The path of the ``dovecot`` binary (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    return shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")


class Dovecot:
    """A Dovecot IMAP server for tests and benchmarks; an async context manager.

    Args:
        users: ``username -> password`` (default: ``help@acme.example`` / ``secret``); the first is the default
            ``user`` of the helpers. More may be added while it runs (``add_user``).
        idle_notify_interval: seconds between the ``* OK Still here`` lines Dovecot sends during IDLE (its
            default is 2 minutes). New mail is pushed (``* n EXISTS``) about 0.5 s after it arrives either way:
            Dovecot's own notify delay, with inotify (or a 1 s check without it).
        startup_timeout: seconds to wait for the greeting before ``start`` fails.
        binary: the ``dovecot`` executable (default: ``find_binary()``).

    Attributes:
        host: ``127.0.0.1``.
        port: plain IMAP, STARTTLS offered.
        ssl_port: IMAP over implicit TLS.
        ca_file: the PEM file of the CA a client must trust for either.
        username, password: the default user's.
        directory: the temporary directory holding config, log and mail (removed by ``close``).
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        idle_notify_interval: float | None = None,
        startup_timeout: float = 10.0,
        binary: str | None = None,
    ) -> None:
        self._users = dict(users) if users is not None else {DEFAULT_USER: DEFAULT_PASSWORD}
        if not self._users:
            raise ValueError("Dovecot: users must name at least one user")
        for name, password in self._users.items():
            _check_credentials(name, password)
        self.username, self.password = next(iter(self._users.items()))
        self.ca_file = server_certs().ca_file
        self._idle_notify_interval = idle_notify_interval
        self._startup_timeout = startup_timeout
        self._binary = binary
        self.port = 0
        self.ssl_port = 0
        self._directory: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._group = 0  # the process group of the latest start

    @staticmethod
    def available() -> bool:
        """Whether the ``dovecot`` binary is installed (``apt-get install dovecot-imapd`` on Debian)."""
        return find_binary() is not None

    # -- where things are --------------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        if self._directory is None:
            raise DovecotError("Dovecot: not started yet; use `async with Dovecot() as imap:` or `await start()`")
        return self._directory

    @property
    def maildir(self) -> Path:
        """The default user's maildir (its INBOX; Dovecot creates it at the first login or delivery)."""
        return self.maildir_of(self.username)

    def maildir_of(self, user: str) -> Path:
        """A user's maildir."""
        return self.directory / "mail" / user.lower()  # Dovecot lowercases user names (%Lu)

    @property
    def pid(self) -> int | None:
        """The master process's id while it runs."""
        return self._process.pid if self._process is not None else None

    def processes(self) -> list[int]:
        """The ids of the server's living processes (none once stopped or killed)."""
        return _living_members(self._group) if self._group else []

    def log(self) -> str:
        """Dovecot's log so far (logins, errors, disconnects)."""
        return "".join(
            path.read_text(errors="replace")
            for path in (self.directory / "dovecot.out", self.directory / "dovecot.log")
            if path.exists()
        )

    def add_user(self, username: str, password: str) -> None:
        """Adds (or changes) a user; Dovecot rereads the users file at the next login, no restart needed."""
        _check_credentials(username, password)
        self._users[username] = password
        if self._directory is not None:
            self._write_users()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts the server (on the same ports and maildir as before, after ``stop``); returns once it greets."""
        await asyncio.to_thread(self._start)

    async def stop(self) -> None:
        """Stops the server: each client gets ``* BYE Server shutting down.`` and is disconnected; the maildir
        stays."""
        await asyncio.to_thread(self._stop, signal.SIGTERM)

    async def kill(self) -> None:
        """Kills every process of the server at once (SIGKILL to its process group), like a crash."""
        await asyncio.to_thread(self._stop, signal.SIGKILL)

    async def restart(self) -> None:
        """Stops and starts again on the same ports with the same maildir (clients must reconnect)."""
        await self.stop()
        await self.start()

    async def close(self) -> None:
        """Stops the server and removes its directory."""
        await asyncio.to_thread(self._close)

    async def __aenter__(self) -> Dovecot:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the mailbox, through IMAP -------------------------------------------------------------------------------

    async def append(self, raw: bytes, *, user: str | None = None, flags: Sequence[str] = ()) -> int:
        """Appends a message to a user's INBOX (as an MTA delivering it would) and returns its UID.

        Bare LF line ends are sent as CRLF, as IMAP requires.
        """
        return await asyncio.to_thread(self._append, raw, user, flags)

    async def messages(self, user: str | None = None) -> list[StoredMail]:
        """The messages in a user's INBOX, by UID (read-only: flags, ``\\Seen`` included, stay as they are)."""
        return await asyncio.to_thread(self._messages, user)

    async def flags(self, uid: int, *, user: str | None = None) -> frozenset[str]:
        """One message's flags (without ``\\Recent``).

        Raises:
            KeyError: no message has this UID.
        """
        for mail in await self.messages(user):
            if mail.uid == uid:
                return mail.flags
        raise KeyError(f"Dovecot: no message with UID {uid} in {user or self.username}'s INBOX")

    async def uidvalidity(self, user: str | None = None) -> int:
        """The UIDVALIDITY of a user's INBOX."""
        return await asyncio.to_thread(self._uidvalidity, user)

    async def reset_uidvalidity(self, user: str | None = None) -> int:
        """Gives a user's INBOX a new UIDVALIDITY and renumbers its messages (from UID 1), keeping them.

        The server is stopped (clients are disconnected), its UID list and indexes removed, and started again,
        as after a mailbox restored from a backup. Returns the new UIDVALIDITY.
        """
        old = await self.uidvalidity(user)
        for _ in range(3):  # Dovecot makes it from the clock's seconds: within the same second it comes back
            await self.stop()
            maildir = self.maildir_of(user or self.username)
            for name in _INDEX_FILES:
                (maildir / name).unlink(missing_ok=True)
            await self.start()
            new = await self.uidvalidity(user)
            if new != old:
                return new
            await asyncio.sleep(1.0)
        raise DovecotError(f"Dovecot: UIDVALIDITY stayed {old} after three resets")

    # -- the process ----------------------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._process is not None:
            raise DovecotError("Dovecot: already running")
        binary = self._binary or find_binary()
        if binary is None:
            raise DovecotError("Dovecot: the dovecot binary is not installed; on Debian: apt-get install dovecot-imapd")
        if self._directory is None:
            self._directory = self._make_directory()
        fixed = self.port != 0  # a restart keeps its ports: clients reconnect to them
        deadline = time.monotonic() + self._startup_timeout
        for attempt in range(_PORT_TRIES):
            if not fixed:
                self.port, self.ssl_port = _free_ports(2)
            self._write_config()
            # No master runs here: what a killed one left (master.pid, the instances dotlock) would stall the next.
            (self.directory / "run" / "master.pid").unlink(missing_ok=True)
            shutil.rmtree(self.directory / "state", ignore_errors=True)
            output = self.directory / "dovecot.out"  # Dovecot's stderr: what it says before its log is open
            seen = output.stat().st_size if output.exists() else 0
            with output.open("ab") as out:
                self._process = subprocess.Popen(
                    [binary, "-F", "-c", str(self.directory / "dovecot.conf")],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
            self._group = self._process.pid
            try:
                self._wait_ready(self._process, deadline)
                return
            except DovecotError:
                self._stop(signal.SIGKILL)
                in_use = b"Address already in use" in output.read_bytes()[seen:]
                if fixed or not in_use or attempt == _PORT_TRIES - 1:
                    raise

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        """Returns once the plain port greets with ``* OK``; raises with the log's tail when Dovecot exits first
        or is silent until ``deadline``."""
        exited = os.pidfd_open(process.pid)  # readable once the process exits
        try:
            while time.monotonic() < deadline:
                with socket.socket() as sock:
                    try:
                        sock.connect((self.host, self.port))
                    except ConnectionRefusedError:  # not listening yet: retry a moment later, unless it exited
                        if select.select([exited], [], [], 0.005)[0]:
                            raise self._exited(process) from None
                        continue
                    # Accepted (by Dovecot, or by whoever holds the port): wait for a greeting or an exit.
                    ready = select.select([sock.fileno(), exited], [], [], max(0.0, deadline - time.monotonic()))[0]
                    if exited in ready:
                        raise self._exited(process)
                    if sock.fileno() in ready:
                        sock.settimeout(max(0.1, deadline - time.monotonic()))
                        with contextlib.suppress(ConnectionResetError):
                            greeting = sock.makefile("rb").readline()
                            if greeting.startswith(b"* OK"):
                                return
                            if greeting:
                                raise self._error(f"greeted with {greeting[:200]!r}, not '* OK'")
            raise self._error(f"did not greet on {self.host}:{self.port} within {self._startup_timeout}s")
        finally:
            os.close(exited)

    def _exited(self, process: subprocess.Popen[bytes]) -> DovecotError:
        # Not reaped here: ``_stop`` reaps it once its process group is cleared.
        status = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        return self._error(f"exited with status {status.si_status if status else '?'}")

    def _stop(self, sig: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            # The whole group, as systemd stops a service: signalled alone, the master takes 1 to 10 s to stop its
            # imap processes (and a killed one leaves them serving their clients). On SIGTERM each imap process
            # says ``* BYE Server shutting down.`` and exits at once; the master then lingers a second or more
            # with nothing left to do for a test, so it is killed. Until it is reaped its group id cannot be
            # reused, so signalling the group again is safe: it reaches a child the master forked meanwhile.
            _end_group(process.pid, sig, timeout=2.0, but=process.pid)
            _end_group(process.pid, signal.SIGKILL, timeout=5.0)
        finally:
            process.wait()

    def _close(self) -> None:
        try:
            self._stop(signal.SIGTERM)
        finally:
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None
                self.port = self.ssl_port = 0

    def _error(self, problem: str) -> DovecotError:
        tail = "\n".join(self.log().splitlines()[-20:]) or "(the log is empty)"
        return DovecotError(f"Dovecot ({self.directory / 'dovecot.conf'}): {problem}; its log ends:\n{tail}")

    # -- files ------------------------------------------------------------------------------------------------------

    def _make_directory(self) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="supportbot-dovecot-"))
        directory.chmod(0o711)  # Dovecot's own users reach the users file and maildirs below it
        owner = _accounts()[0]  # who reads and writes the mail
        for name in ("mail", "home"):
            (directory / name).mkdir()
            os.chown(directory / name, owner.pw_uid, owner.pw_gid)
        self._directory = directory
        self._write_users()
        return directory

    def _write_users(self) -> None:
        path = self.directory / "users"
        staged = path.with_suffix(".new")
        # Dovecot looks users up lowercased (auth_username_format = %Lu).
        staged.write_text(
            "".join(f"{name.lower()}:{{PLAIN}}{password}::::::\n" for name, password in self._users.items())
        )
        staged.chmod(0o644)
        staged.replace(path)  # Dovecot never reads a half-written file

    def _write_config(self) -> None:
        internal, group, login = _accounts()
        uid, gid, d, cert = internal.pw_uid, internal.pw_gid, self.directory, server_certs()
        notify = (
            f"imap_idle_notify_interval = {self._idle_notify_interval:g} secs" if self._idle_notify_interval else ""
        )
        (d / "dovecot.conf").write_text(f"""\
# Written by connectors.email.testing.Dovecot for one test server.
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap
listen = {self.host}
default_internal_user = {internal.pw_name}
default_internal_group = {group}
default_login_user = {login}
first_valid_uid = {uid}
mail_uid = {uid}
mail_gid = {gid}
mail_location = maildir:{d}/mail/%Lu
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
auth_failure_delay = 0
ssl = yes
ssl_cert = <{cert.cert_file}
ssl_key = <{cert.key_file}
mailbox_idle_check_interval = 1 secs
{notify}
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/home/%Lu
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {self.port}
  }}
  inet_listener imaps {{
    port = {self.ssl_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
protocol imap {{
  mail_max_userip_connections = 10000
}}
""")

    # -- IMAP through the standard library, in a thread ------------------------------------------------------------

    @contextlib.contextmanager
    def _session(self, user: str | None) -> Iterator[imaplib.IMAP4]:
        name = user or self.username
        if name not in self._users:
            raise KeyError(f"Dovecot: unknown user {name!r}; add it with add_user(name, password)")
        imap = imaplib.IMAP4(self.host, self.port, timeout=10)
        try:
            _ok(imap.login(name, self._users[name]), "LOGIN")
            yield imap
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                imap.logout()

    def _append(self, raw: bytes, user: str | None, flags: Sequence[str]) -> int:
        with self._session(user) as imap:
            status, data = imap.append("INBOX", f"({' '.join(flags)})" if flags else "", None, raw)
            _ok((status, data), "APPEND")
        match = re.search(rb"\[APPENDUID \d+ (\d+)\]", data[0] or b"")
        if match is None:
            raise DovecotError(f"Dovecot: APPEND answered {data!r}, without APPENDUID")
        return int(match.group(1))

    def _messages(self, user: str | None) -> list[StoredMail]:
        with self._session(user) as imap:
            status, data = imap.select("INBOX", readonly=True)  # EXAMINE: no \Recent or \Seen taken away
            _ok((status, data), "EXAMINE")
            if int(data[0] or b"0") == 0:
                return []
            status, data = imap.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            _ok((status, data), "UID FETCH")
        mails: list[StoredMail] = []
        for item, after in zip(data, [*data[1:], b""], strict=True):
            if isinstance(item, tuple):  # (b'1 (UID 1 FLAGS (\\Seen) BODY[] {42}', raw), then b')'
                # FLAGS may come before the literal or after it (in the next item); look in both.
                text = item[0] + b" " + (after if isinstance(after, bytes) else b"")
                uid, found = re.search(rb"\bUID (\d+)", text), re.search(rb"\bFLAGS \(([^)]*)\)", text)
                if uid is None or found is None:
                    raise DovecotError(f"Dovecot: cannot read the FETCH response {item[0]!r}")
                flags = frozenset(found.group(1).decode().split()) - {"\\Recent"}
                mails.append(StoredMail(uid=int(uid.group(1)), flags=flags, raw=item[1]))
        return sorted(mails, key=lambda mail: mail.uid)

    def _uidvalidity(self, user: str | None) -> int:
        with self._session(user) as imap:
            status, data = imap.status("INBOX", "(UIDVALIDITY)")
            _ok((status, data), "STATUS")
        match = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"")
        if match is None:
            raise DovecotError(f"Dovecot: STATUS answered {data!r}, without UIDVALIDITY")
        return int(match.group(1))


def _accounts() -> tuple[pwd.struct_passwd, str, str]:
    """Dovecot's internal user (who also owns the mail), its group, and the login processes' user."""
    if os.geteuid() != 0:  # rootless: every process runs as this user
        me = pwd.getpwuid(os.geteuid())
        return me, grp.getgrgid(me.pw_gid).gr_name, me.pw_name
    try:
        internal, login = pwd.getpwnam("dovecot"), pwd.getpwnam("dovenull")
    except KeyError:
        raise DovecotError(
            "Dovecot: the users 'dovecot' and 'dovenull' are missing; dovecot-core creates them"
        ) from None
    return internal, grp.getgrgid(internal.pw_gid).gr_name, login.pw_name


def _check_credentials(username: str, password: str) -> None:
    if not username or any(c in username + password for c in ":\r\n\0") or "/" in username:
        raise ValueError(
            f"Dovecot: user {username!r}: names and passwords may not be empty or hold ':', '/' or line ends"
        )


def _ok(result: tuple[str, Sequence[object]], command: str) -> None:
    status, data = result
    if status != "OK":
        raise DovecotError(f"Dovecot: {command} answered {status} {data!r}")


def _free_ports(count: int) -> list[int]:
    """Ports the kernel has just handed out as free (held together, so they differ)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _end_group(pgid: int, sig: signal.Signals, *, timeout: float, but: int = 0) -> None:
    """Signals the group (again every 50 ms) until every process of it, ``but`` one, has died; zombies, left for
    init to reap, hold no socket and count as dead."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        resend = time.monotonic() + 0.05
        while set(_living_members(pgid)) - {but}:
            if time.monotonic() > min(resend, deadline):
                break
            time.sleep(0.002)
        else:
            return
        if time.monotonic() > deadline:
            return


def _living_members(pgid: int) -> list[int]:
    """The ids of the group's processes that are not zombies, from /proc."""
    living = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        state, _ppid, group = stat.rpartition(")")[2].split()[:3]
        if int(group) == pgid and state not in "ZX":
            living.append(int(entry.name))
    return living
