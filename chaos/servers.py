"""Private throw-away servers on free ports: a PostgreSQL cluster (initdb) and a redis-server, for outages.

Tests and chaos runs that stop a database stop one of these, never the machine's shared servers, which
other runs use at the same time. Each server lives in its own temporary directory, runs as a child of
the process that started it (and dies with it: ``setpriv --pdeathsig``), and ``close()`` removes both.
Directories left by a run that was killed outright are swept by the next server that starts.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, ClassVar

from fullon_ohlcv_service.errors import StoreUnavailable

HOST = "127.0.0.1"
PG_USER = "postgres"  # the superuser of a private cluster, and the system user that runs it as root
OWNER_FILE = "owner.pid"
_open: set[PrivateServer] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def answers(port: int, timeout: float = 0.5) -> bool:
    """True while something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def pg_bindir() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: the newest Debian /usr/lib/postgresql/N/bin, else PATH."""
    debian = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()),
                    key=lambda p: int(p.parent.name), reverse=True)
    for d in debian:
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return d
    found = shutil.which("initdb")
    if found is not None and (Path(found).parent / "postgres").is_file():
        return Path(found).parent
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _postmaster_alive(data: Path) -> bool:
    try:
        return _pid_alive(int((data / "postmaster.pid").read_text().split()[0]))
    except (OSError, ValueError, IndexError):
        return False


def sweep_leftovers(prefix: str) -> list[Path]:
    """Remove the directories of private servers whose owner process is gone (a run killed with SIGKILL)."""
    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            owner = int((d / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being created
        if _pid_alive(owner) or _postmaster_alive(d / "data"):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


class PrivateServer:
    """A server process of our own: ``start()`` (again after ``stop()``), ``stop()``, ``close()``."""

    kind: ClassVar[str] = "server"
    prefix: ClassVar[str] = "ohlcv-server-"
    start_timeout: ClassVar[float] = 60.0
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM  # a clean shutdown
    quit_signal: ClassVar[signal.Signals] = signal.SIGTERM  # at once: close(), and when our process dies

    def __init__(self) -> None:
        self.port = 0
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.owner = os.getpid()  # a forked child that exits must not close its parent's servers

    # ------------------------------------------------------------------ for subclasses

    @classmethod
    def missing(cls) -> str | None:
        """Why this server cannot run here (a program not installed), or None."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """One-time set-up of ``self.root`` before the first start."""

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        return answers(self.port, 0.3)

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "server.log"

    def log_tail(self, n: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:].strip().replace("\n", " | ")
        except (OSError, AssertionError):
            return ""

    def start(self) -> None:
        """Start the server (create it the first time, on a free port) and wait until it accepts connections."""
        if self.running:
            return
        if self.root is None:
            why = self.missing()
            if why is not None:
                raise StoreUnavailable(f"cannot start a private {self.kind}: {why}")
            sweep_leftovers(self.prefix)
            self.owner = os.getpid()
            self.root = Path(tempfile.mkdtemp(prefix=self.prefix))
            (self.root / OWNER_FILE).write_text(f"{self.owner}\n")
            _open.add(self)
            try:
                self._prepare()
            except BaseException:
                self.close()
                raise
            for _ in range(3):  # a free port may be taken between the probe and the bind
                self.port = free_port()
                if self._launch():
                    return
            why = self.log_tail()
            self.close()
            raise StoreUnavailable(f"private {self.kind} did not start: {why}")
        if not self._launch():
            raise StoreUnavailable(f"private {self.kind} did not start again on port {self.port}: {self.log_tail()}")

    def _launch(self) -> bool:
        """Spawn the server; True once it is ready, False (and reaped) if it exited or never got ready."""
        assert self.root is not None
        if self._log is None:
            self._log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.proc = subprocess.Popen(_as_owner(self._argv(), self.quit_signal), cwd=self.root, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self._ready():
                return True
            time.sleep(0.05)
        self._end(signal.SIGKILL, 10)
        return False

    def stop(self) -> None:
        """A clean shutdown (a fast one for PostgreSQL); the port no longer answers when this returns."""
        if not self.running:
            return
        self._end(self.stop_signal, 30)
        deadline = time.monotonic() + 10
        while answers(self.port, 0.2):
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"private {self.kind} on port {self.port} still answers after stop")
            time.sleep(0.1)

    def _end(self, sig: int, timeout: float) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.proc = None

    def close(self) -> None:
        """Stop at once (no clean shutdown: the data is thrown away) and remove the directory."""
        self._end(self.quit_signal, 10)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        _open.discard(self)

    def __enter__(self) -> PrivateServer:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class PrivatePostgres(PrivateServer):
    """A PostgreSQL cluster of its own: superuser ``postgres``, trust authentication, TCP on 127.0.0.1 only.

    Durability is off (fsync, synchronous commit): the cluster is thrown away. As root it runs as the
    system user ``postgres`` (initdb refuses root); its directory belongs to that user.
    """

    kind = "PostgreSQL"
    prefix = "ohlcv-pg-"
    stop_signal = signal.SIGINT  # fast shutdown: clients are disconnected
    quit_signal = signal.SIGQUIT  # immediate shutdown

    @classmethod
    def missing(cls) -> str | None:
        if pg_bindir() is None:
            return "initdb/postgres not found (Debian: apt-get install postgresql)"
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            return "setpriv not found (util-linux), needed to run PostgreSQL as its own user"
        if os.geteuid() == 0:
            try:
                import pwd

                pwd.getpwnam(PG_USER)
            except KeyError:
                return f"no system user {PG_USER!r} to run PostgreSQL as (initdb refuses root)"
        return None

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@{HOST}:{self.port}/{database}"

    def _prepare(self) -> None:
        assert self.root is not None
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam(PG_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        bindir = pg_bindir()
        assert bindir is not None
        proc = subprocess.run(
            _as_owner([str(bindir / "initdb"), "-D", str(self.data), "-U", PG_USER, "-A", "trust", "-E", "UTF8",
                       "--no-locale", "--no-sync"]),
            cwd=self.root, capture_output=True, text=True, timeout=300, check=False,
        )
        if proc.returncode != 0:
            why = (proc.stdout + proc.stderr).strip().replace("\n", " | ")[-600:]
            raise StoreUnavailable(f"initdb failed (exit {proc.returncode}): {why}")

    def _argv(self) -> list[str]:
        bindir = pg_bindir()
        assert bindir is not None
        settings = {
            "listen_addresses": HOST, "unix_socket_directories": "", "fsync": "off", "synchronous_commit": "off",
            "full_page_writes": "off", "shared_buffers": "32MB", "max_connections": "100",
            "logging_collector": "off",
        }
        argv = [str(bindir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _ready(self) -> bool:
        """postmaster.pid says ``ready`` (PostgreSQL 10+) for this very process, and the port answers."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        assert self.proc is not None
        return (len(lines) >= 8 and lines[0].strip() == str(self.proc.pid) and lines[7].strip() == "ready"
                and answers(self.port, 0.3))


class PrivateRedis(PrivateServer):
    """A redis-server of its own on 127.0.0.1, keeping nothing on disk, optionally with a password."""

    kind = "Redis"
    prefix = "ohlcv-redis-"

    def __init__(self, password: str | None = None) -> None:
        super().__init__()
        self.password = password

    @classmethod
    def missing(cls) -> str | None:
        if shutil.which("redis-server") is None:
            return "redis-server not found (Debian: apt-get install redis-server)"
        return None

    def url(self, db: int = 0) -> str:
        import urllib.parse

        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/{db}"

    def _ready(self) -> bool:
        """This very process answers (not another one that took the port first)."""
        import redis

        assert self.proc is not None
        client = redis.Redis(host=HOST, port=self.port, password=self.password, socket_timeout=1.0,
                             socket_connect_timeout=0.3)
        try:
            return int(client.info("server")["process_id"]) == self.proc.pid
        except (redis.RedisError, KeyError, ValueError):
            return False
        finally:
            client.close()

    def _argv(self) -> list[str]:
        assert self.root is not None
        argv = ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--dir", str(self.root), "--daemonize", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv


def _as_owner(argv: list[str], pdeathsig: signal.Signals | None = None) -> list[str]:
    """As root, run ``argv`` as the postgres user (PostgreSQL refuses root); get ``pdeathsig`` when we die.

    The parent-death signal comes when the thread that started the server ends: start servers from the
    main thread (the tests and the chaos runner do).
    """
    if shutil.which("setpriv") is None:
        return argv
    wrap = ["setpriv"]
    if os.geteuid() == 0 and Path(argv[0]).name in ("initdb", "postgres"):
        wrap += ["--reuid", PG_USER, "--regid", PG_USER, "--init-groups"]
    if pdeathsig is not None:
        wrap += ["--pdeathsig", pdeathsig.name.removeprefix("SIG")]
    return argv if wrap == ["setpriv"] else [*wrap, "--", *argv]


@atexit.register
def _close_all() -> None:
    """Last resort for a run that never reached its own clean-up (its finalisers or ``finally``)."""
    for server in list(_open):
        if server.owner == os.getpid():
            server.close()
