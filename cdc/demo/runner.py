"""``cdcsync demo``: the whole pipeline on throwaway servers, with live progress and a final check.

``run_demo(options)`` makes one temporary directory, starts a PostgreSQL cluster, the
embedded broker, the schema registry and the local HTTP CRM in it, creates the sample
tables, and runs capture, sync (integrations ``crm`` and ``analytics`` of
``mappers.examples``) and a load writer in one asyncio loop while a live view shows
throughput, replication lag and commit-to-applied latency. When the duration is over or
on SIGINT/SIGTERM it stops the writer, waits (up to ``CATCH_UP_S``) for the targets to
converge, stops capture and sync, prints a summary with the consistency check (CRM
contacts equal the source customers; ``analytics.orders`` holds exactly the source
orders, each linked to its customer's CRM id) and tears everything down.

Invariants:
- capture is streaming (its slot exists) before the first row is written, so every row
  the writer commits is captured;
- every server and the temporary directory are removed on every way out (normal end,
  signal, exception), unless ``keep`` asks to keep the directory; the servers' own
  temporary files are created inside it;
- the log file (``demo.log``, INFO by default) is in that directory: its path is printed
  only when ``keep`` keeps it; otherwise, when the run did not end with a matching check,
  its last lines are shown before it is removed;
- the CRM signing secret is generated per run, handed to the config through an
  in-memory environment mapping, and never printed or logged;
- the exit code is 0 exactly when the final consistency check matched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Any, Final, Protocol, TypeVar

import psycopg
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from rich.console import Console
from rich.live import Live

from cdc.capture.runtime import Capture
from cdc.config import Config, parse_config
from cdc.core.errors import CdcsyncError, first_line
from cdc.core.logs import SecretScrubber
from cdc.demo.crm import CrmServer
from cdc.demo.live_view import DemoView, Snapshot, print_summary, render_table, status_line
from cdc.demo.throwaway import LocalBroker, LocalPostgres, LocalRegistry
from cdc.kafka.client_log import with_logger
from cdc.sync.runtime import Sync
from cdc.sync.worker import IntegrationStats
from mappers.examples import SAMPLE_SCHEMA_SQL, example_integrations

log = logging.getLogger("cdcsync.demo")

PREFIX: Final = "demo"
INTEGRATIONS: Final = ("crm", "analytics")
SECRET_ENV: Final = "CDCSYNC_DEMO_CRM_SECRET"
CATCH_UP_S: Final = 20.0
"""How long the targets get to catch up after the writer stops."""
START_TIMEOUT_S: Final = 60.0
"""How long capture may take to start streaming."""
STATUS_EVERY_S: Final = 3.0
"""Interval of the plain status lines when stdout is not a terminal."""


class DemoError(CdcsyncError):
    """The demo could not run (a stage failed to start or stopped with an error)."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """What the user asked for on the command line."""

    duration_s: float | None = None
    rate: float = 50.0
    keep: bool = False
    log_level: str = "INFO"
    seed_customers: int = 20


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The final comparison of the targets with the source."""

    customers: int
    contacts: int
    contact_mismatches: int
    orders: int
    analytics_rows: int
    order_mismatches: int

    @property
    def matched(self) -> bool:
        return self.contact_mismatches == 0 and self.order_mismatches == 0

    def describe(self) -> str:
        verdict = "MATCHED" if self.matched else "DID NOT MATCH"
        return (
            f"consistency check: {verdict} - {self.customers} source customers vs"
            f" {self.contacts} CRM contacts ({self.contact_mismatches} differ);"
            f" {self.orders} source orders vs {self.analytics_rows} analytics.orders rows"
            f" ({self.order_mismatches} differ)"
        )


@dataclass(frozen=True, slots=True)
class Servers:
    """The running throwaway servers."""

    postgres: LocalPostgres
    broker: LocalBroker
    registry: LocalRegistry
    crm: CrmServer
    dsn: str


# --------------------------------------------------------------------------- config


def demo_config(servers: Servers, secret: str, *, env_name: str = SECRET_ENV) -> Config:
    """The in-memory config: sample tables, both example integrations, state in ``cdcsync``."""
    retry = {"attempts": 5, "initial_backoff_s": 0.1, "max_backoff_s": 2.0}
    integrations = example_integrations(
        topic_prefix=PREFIX,
        crm_url=servers.crm.url,
        analytics_dsn=servers.dsn,
        secret_env=env_name,
        timeout_s=5,
    )
    for integration in integrations.values():
        integration["retry"] = retry
    integrations["crm"]["circuit"] = {"failure_threshold": 5, "reset_timeout_s": 1.0}
    data: dict[str, Any] = {
        "source": {
            "dsn": servers.dsn,
            "slot": "cdcsync_demo",
            "publication": "cdcsync_demo",
            "tables": ["public.customers", "public.orders"],
            "snapshot": "never",
            "status_interval_s": 1.0,
        },
        "kafka": {
            "bootstrap_servers": servers.broker.bootstrap,
            "topic_prefix": PREFIX,
            # The embedded broker completes a consumer group join after about half the
            # session timeout: a short one gets sync going within seconds. Only errors
            # from librdkafka reach the terminal, so that the view stays readable.
            "properties": {"session.timeout.ms": 6000, "log_level": 3},
        },
        "registry": {"url": servers.registry.url},
        "integrations": integrations,
        "state": {"schema": "cdcsync"},
    }
    return parse_config(data, env={env_name: secret})


# --------------------------------------------------------------------------- load


class LoadWriter:
    """Drives a steady load on the sample tables: about ``rate`` row writes per second.

    Inserts and updates customers (``updated_at`` moves forward, the CRM's version), and
    inserts, updates and deletes orders of existing customers; each write is its own
    transaction. Customers are never deleted, so every order's customer exists.
    """

    _STATUSES: Final = ("paid", "shipped", "delivered", "cancelled")

    def __init__(self, dsn: str, *, rate: float, seed: int | None = None) -> None:
        self.dsn = dsn
        self.rate = rate
        self.rows_written = 0
        self._rng = random.Random(seed)
        self._customers: list[int] = []
        self._orders: list[int] = []
        self._next_customer = 1
        self._next_order = 1

    async def run(self, stop: asyncio.Event, *, seed_customers: int = 20) -> None:
        """Seed ``seed_customers`` customers, then write at ``rate`` until ``stop`` is set."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            for _ in range(seed_customers):
                await self._insert_customer(conn)
            loop = asyncio.get_running_loop()
            began, done = loop.time(), 0
            while not stop.is_set():
                due = int((loop.time() - began) * self.rate) - done
                if due > self.rate:  # fell behind by over a second: do not burst to catch up
                    began, done, due = loop.time(), 0, 1
                for _ in range(max(0, due)):
                    await self._write_one(conn)
                    done += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.02)

    async def _write_one(self, conn: psycopg.AsyncConnection[Any]) -> None:
        roll = self._rng.random()
        if roll < 0.15 or not self._customers:
            await self._insert_customer(conn)
            return
        if roll < 0.35:
            cid = self._rng.choice(self._customers)
            n = self.rows_written
            await conn.execute(
                "UPDATE customers SET email = %s, phone = %s, updated_at = clock_timestamp()"
                " WHERE id = %s",
                (f"c{cid}.{n}@example.com", f"+1-555-{n % 10_000:04d}", cid),
            )
        elif roll < 0.70 or not self._orders:
            oid, self._next_order = self._next_order, self._next_order + 1
            await conn.execute(
                "INSERT INTO orders (id, customer_id, amount, status) VALUES (%s, %s, %s, 'new')",
                (
                    oid,
                    self._rng.choice(self._customers),
                    Decimal(self._rng.randint(100, 99_999)) / 100,
                ),
            )
            self._orders.append(oid)
        elif roll < 0.90:
            await conn.execute(
                "UPDATE orders SET status = %s WHERE id = %s",
                (self._rng.choice(self._STATUSES), self._rng.choice(self._orders)),
            )
        else:
            oid = self._orders.pop(self._rng.randrange(len(self._orders)))
            await conn.execute("DELETE FROM orders WHERE id = %s", (oid,))
        self.rows_written += 1

    async def _insert_customer(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cid, self._next_customer = self._next_customer, self._next_customer + 1
        await conn.execute(
            "INSERT INTO customers (id, name, email, phone) VALUES (%s, %s, %s, NULL)",
            (cid, f"Customer {cid}", f"c{cid}@example.com"),
        )
        self._customers.append(cid)
        self.rows_written += 1


# --------------------------------------------------------------------------- check


def check_consistency(dsn: str, crm: CrmServer) -> CheckResult:
    """Compare the CRM and ``analytics.orders`` with the source tables (blocking)."""
    contacts = crm.store.contacts()
    with psycopg.connect(dsn) as conn:
        customers = {
            str(r[0]): {"customer_id": r[0], "name": r[1], "email": r[2], "phone": r[3]}
            for r in conn.execute("SELECT id, name, email, phone FROM customers")
        }
        orders = conn.execute("SELECT id, customer_id, amount, status FROM orders").fetchall()
        found = conn.execute("SELECT to_regclass('analytics.orders')").fetchone()
        rows: list[tuple[Any, ...]] = []
        if found is not None and found[0] is not None:
            rows = conn.execute(
                "SELECT _cdc_key, order_id, customer_id, customer_crm_id, amount, status"
                " FROM analytics.orders"
            ).fetchall()
    crm_ids = {key: c.id for key, c in contacts.items()}
    expected = {
        str(o[0]): (o[0], o[1], crm_ids.get(str(o[1])), Decimal(o[2]), o[3]) for o in orders
    }
    actual = {r[0]: (r[1], r[2], r[3], Decimal(r[4]), r[5]) for r in rows}
    actual_contacts = {key: dict(c.fields) for key, c in contacts.items()}
    return CheckResult(
        customers=len(customers),
        contacts=len(contacts),
        contact_mismatches=_differences(customers, actual_contacts),
        orders=len(orders),
        analytics_rows=len(rows),
        order_mismatches=_differences(expected, actual),
    )


def _differences(want: Mapping[str, object], got: Mapping[str, object]) -> int:
    return sum(1 for key in want.keys() | got.keys() if want.get(key) != got.get(key))


# --------------------------------------------------------------------------- run


@dataclass(frozen=True, slots=True)
class _Report:
    snapshot: Snapshot
    check: CheckResult | None
    failure: str | None
    interrupted: bool


class _Demo:
    """One run of the pipeline on started servers; see the module docstring."""

    def __init__(self, servers: Servers, config: Config, options: DemoOptions) -> None:
        self.servers = servers
        self.options = options
        self.capture = Capture(config, record_latency=True)
        self.sync = Sync(config, record_latency=True)
        self.writer = LoadWriter(servers.dsn, rate=options.rate)
        self.view = DemoView(
            self.capture.stats,
            self._worker_stats,
            lambda: self.writer.rows_written,
            names=INTEGRATIONS,
        )
        self.stop = asyncio.Event()  # the user asked to stop (signal) or the time is up
        self.hurry = asyncio.Event()  # a second signal: skip the catch-up wait
        self.interrupted = False

    def _worker_stats(self) -> dict[str, IntegrationStats]:
        return {name: worker.stats for name, worker in self.sync.workers.items()}

    def _on_signal(self) -> None:
        self.interrupted = True
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()

    async def run(self, console: Console) -> _Report:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        pipeline_stop = asyncio.Event()
        stages = {
            "capture": asyncio.create_task(self.capture.run(pipeline_stop), name="capture"),
            "sync": asyncio.create_task(self.sync.run(pipeline_stop), name="sync"),
        }
        writer_stop = asyncio.Event()
        writer_task: asyncio.Task[None] | None = None
        failure: str | None = None
        check: CheckResult | None = None
        try:
            failure = await self._wait_started(stages)
            if failure is None and not self.stop.is_set():
                writer_task = asyncio.create_task(
                    self.writer.run(writer_stop, seed_customers=self.options.seed_customers),
                    name="writer",
                )
                stages["writer"] = writer_task
                failure = await self._watch(console, stages)
            writer_stop.set()
            if writer_task is not None:
                with contextlib.suppress(Exception):
                    await writer_task
            if failure is None and writer_task is not None:
                check = await self._catch_up(console)
        finally:
            writer_stop.set()
            pipeline_stop.set()
            await self._finish(stages)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
                signal.signal(sig, _INTERRUPTS.handler)
        return _Report(self.view.sample(), check, failure, self.interrupted)

    async def _wait_started(self, stages: Mapping[str, asyncio.Task[None]]) -> str | None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.capture.stats.connected and self.sync.ready.is_set()):
            failure = _failed(stages)
            if failure is not None:
                return failure
            if self.stop.is_set():
                return None
            if time.monotonic() > deadline:
                error = self.capture.stats.last_error or "no error reported"
                return f"the pipeline did not start within {START_TIMEOUT_S:.0f} s ({error})"
            await asyncio.sleep(0.1)
        return None

    async def _watch(
        self, console: Console, stages: Mapping[str, asyncio.Task[None]]
    ) -> str | None:
        """Show progress until stopped, the duration is over or a stage fails."""
        duration = self.options.duration_s
        ends = None if duration is None else time.monotonic() + duration
        title = (
            f"cdcsync demo - broker {self.servers.broker.bootstrap},"
            f" registry {self.servers.registry.url}, CRM {self.servers.crm.url}"
        )
        live: Live | None = None
        if console.is_terminal:
            live = Live(render_table(self.view.sample(), title=title), console=console)
            live.start()
        last_line = time.monotonic()
        try:
            while not self.stop.is_set():
                failure = _failed(stages)
                if failure is not None:
                    return failure
                if ends is not None and time.monotonic() >= ends:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 0.25)
                if live is not None:
                    live.update(render_table(self.view.sample(), title=title))
                elif time.monotonic() - last_line >= STATUS_EVERY_S:
                    last_line = time.monotonic()
                    console.print(status_line(self.view.sample()), highlight=False)
        finally:
            if live is not None:
                live.stop()
        return None

    async def _catch_up(self, console: Console) -> CheckResult:
        """Wait up to ``CATCH_UP_S`` for the targets to equal the source; the last check."""
        console.print(
            f"writer stopped after {self.writer.rows_written} rows; waiting up to"
            f" {CATCH_UP_S:.0f} s for sync to catch up...",
            highlight=False,
        )
        deadline = time.monotonic() + CATCH_UP_S
        while True:
            result = await asyncio.to_thread(check_consistency, self.servers.dsn, self.servers.crm)
            if result.matched or self.hurry.is_set() or time.monotonic() >= deadline:
                return result
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.hurry.wait(), 0.5)

    async def _finish(self, stages: Mapping[str, asyncio.Task[None]]) -> None:
        pending = [t for t in stages.values() if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=30)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=10)
        for task in stages.values():
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("%s stopped with an error", task.get_name(), exc_info=task.exception())


def _failed(stages: Mapping[str, asyncio.Task[None]]) -> str | None:
    """A description of the first stage that ended on its own, if any."""
    for name, task in stages.items():
        if not task.done():
            continue
        if task.cancelled():
            return f"{name} was cancelled"
        exc = task.exception()
        if exc is not None:
            return f"{name} failed: {type(exc).__name__}: {first_line(exc)}"
        return f"{name} stopped unexpectedly"
    return None


# --------------------------------------------------------------------------- entry point


def run_demo(options: DemoOptions, *, console: Console | None = None) -> int:
    """Run the demo end to end; the exit code (0 when the consistency check matched)."""
    console = console or Console(soft_wrap=True)
    previous = {
        sig: signal.signal(sig, _INTERRUPTS.handler) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with contextlib.ExitStack() as stack:
            try:
                return _run_in(stack, options, console)
            finally:
                _quiet_signals()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_in(stack: contextlib.ExitStack, options: DemoOptions, console: Console) -> int:
    """The demo proper; everything it starts is registered on ``stack`` to be undone."""
    workdir = Path(tempfile.mkdtemp(prefix="cdcsync-demo-"))
    if options.keep:
        stack.callback(console.print, f"kept the demo directory: {workdir}")
    else:
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    # The PostgreSQL server may run as another user: it must reach its data directory.
    workdir.chmod(0o755)
    log_path = workdir / "demo.log"
    stack.enter_context(_file_logging(log_path, options.log_level))
    console.print(f"demo directory: {workdir}", highlight=False)
    if options.keep:
        console.print(f"log file: {log_path} (kept with the directory)", highlight=False)
    else:
        console.print(
            "the directory and its log are removed at the end (--keep keeps them)",
            highlight=False,
        )
    log.info(
        "cdcsync demo: %s rows/s for %s, log level %s",
        options.rate,
        "until interrupted" if options.duration_s is None else f"{options.duration_s:g} s",
        options.log_level.upper(),
    )
    secret = secrets.token_hex(16)
    servers = _start_servers(stack, workdir, console, crm_secret=secret)
    config = demo_config(servers, secret)
    report = asyncio.run(_Demo(servers, config, options).run(console))
    matched = report.check is not None and report.check.matched
    check = None if report.check is None else report.check.describe()
    log.info("demo ended: %s", report.failure or check or "no consistency check was run")
    print_summary(
        console,
        report.snapshot,
        check=check,
        failure=report.failure,
        interrupted=report.interrupted,
        log_path=log_path if options.keep else None,
    )
    if not matched and not options.keep:
        _print_log_tail(console, log_path)
    console.print("stopping the servers...", highlight=False)
    return 0 if matched else 1


LOG_TAIL_LINES: Final = 20


def _print_log_tail(console: Console, path: Path) -> None:
    """The last lines of a log that is about to be removed with the demo directory."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    if not lines:
        return
    console.print(
        f"last {min(len(lines), LOG_TAIL_LINES)} lines of the log (removed with the directory):",
        highlight=False,
    )
    for line in lines[-LOG_TAIL_LINES:]:
        console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)


class _Interrupts:
    """SIGINT/SIGTERM raise ``KeyboardInterrupt``, except inside ``deferred()``: then at its end.

    Starting a server is deferred so that an interrupt never leaves a half-started
    server whose ``stop`` was not registered yet.
    """

    def __init__(self) -> None:
        self._deferring = False
        self._pending = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self._deferring:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
            if self._pending:
                self._pending = False
                raise KeyboardInterrupt


_INTERRUPTS: Final = _Interrupts()


def _quiet_signals() -> None:
    """While tearing down, a further Ctrl-C must not leave servers running."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


@contextlib.contextmanager
def _file_logging(path: Path, level: str) -> Iterator[None]:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.addFilter(SecretScrubber())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per registry request is noise at INFO; cdcsync logs what matters itself.
    httpx_logger = logging.getLogger("httpx")
    httpx_level = httpx_logger.level
    if level.upper() == "INFO":
        httpx_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        httpx_logger.setLevel(httpx_level)
        handler.close()


@contextlib.contextmanager
def _temp_root(directory: Path) -> Iterator[None]:
    """Make ``tempfile`` create the servers' files inside ``directory``."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(directory)
    try:
        yield
    finally:
        tempfile.tempdir = saved


class _Server(Protocol):
    def start(self) -> object: ...
    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Server)


def _start_servers(
    stack: contextlib.ExitStack, workdir: Path, console: Console, *, crm_secret: str
) -> Servers:
    def started(what: str, server: _S) -> _S:
        began = time.monotonic()
        with _INTERRUPTS.deferred():
            stack.callback(server.stop)  # first: a failed start may leave something to stop
            server.start()
        console.print(f"  {what} ({time.monotonic() - began:.1f} s)", highlight=False)
        return server

    console.print("starting throwaway servers...", highlight=False)
    with _temp_root(workdir):
        pg = started("PostgreSQL", LocalPostgres())
        broker = started("broker", LocalBroker())
        registry = started("schema registry", LocalRegistry())
    # The CRM checks the signatures the sink makes with the same per-run secret.
    crm = started("CRM", CrmServer(secret=crm_secret))
    console.print(
        f"  broker {broker.bootstrap}, registry {registry.url}, CRM {crm.url}", highlight=False
    )
    log.info("servers: broker %s, registry %s, CRM %s", broker.bootstrap, registry.url, crm.url)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(SAMPLE_SCHEMA_SQL)
    _create_topics(broker.bootstrap, [f"{PREFIX}.public.customers", f"{PREFIX}.public.orders"])
    return Servers(postgres=pg, broker=broker, registry=registry, crm=crm, dsn=pg.dsn)


def _create_topics(bootstrap: str, topics: list[str]) -> None:
    """Create the tables' topics up front, so that sync's consumers are assigned at once."""
    admin = AdminClient(with_logger({"bootstrap.servers": bootstrap, "log_level": 3}))
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=1, replication_factor=1) for t in topics],
        request_timeout=20,
    )
    for topic, future in futures.items():
        try:
            future.result(timeout=20)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise DemoError(f"cannot create topic {topic}: {first_line(exc)}") from exc
