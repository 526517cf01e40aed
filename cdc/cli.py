"""The ``cdcsync`` command line.

Thin: each command parses its options, builds typed objects and calls into
the package. Errors derived from ``CdcsyncError`` are printed as one plain
line and exit with the error's ``exit_code``: 2 (configuration), 3 to 5 (a
server refusing for good, see ``cdc.ops.preflight``) or 1 (anything else);
they never print secrets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import click

import cdc.core.httpx_cli  # noqa: F401  (first: before anything imports httpx)
from cdc import __version__
from cdc.core.errors import CdcsyncError, ConfigError
from cdc.core.gcfreeze import freeze_when_ready

if TYPE_CHECKING:
    from cdc.capture.runtime import Capture
    from cdc.config import Config
    from cdc.sync.runtime import Sync

log = logging.getLogger("cdcsync")


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host or "127.0.0.1", int(port)


@click.group()
@click.version_option(__version__, prog_name="cdcsync")
def cli() -> None:
    """cdcsync: PostgreSQL changes to Kafka (Avro) to the systems you run."""


def _config_option(func: Any) -> Any:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="YAML config file (every key can also come from CDCSYNC_SECTION__KEY).",
    )(func)


def _setup_logging(level: str, fmt: str) -> None:
    from cdc.core.logs import configure  # noqa: PLC0415

    configure(level=level, fmt=fmt)


@cli.command()
@_config_option
def capture(config_path: str | None) -> None:
    """Stream the source database's changes to Kafka (capture only)."""
    from cdc.capture.runtime import Capture  # noqa: PLC0415
    from cdc.config import load_config  # noqa: PLC0415

    config = load_config(config_path)
    _setup_logging(config.logging.level, config.logging.format)
    _run_roles(config, capture=Capture(config))


@cli.command()
@_config_option
@click.option(
    "--integration",
    "integrations",
    multiple=True,
    help="Run only this integration (repeatable); default: all configured.",
)
def sync(config_path: str | None, integrations: tuple[str, ...]) -> None:
    """Apply captured events to the integrations' targets (sync only)."""
    from cdc.config import load_config  # noqa: PLC0415
    from cdc.sync.runtime import Sync  # noqa: PLC0415

    config = load_config(config_path)
    _setup_logging(config.logging.level, config.logging.format)
    _run_roles(config, sync=Sync(config, only=integrations or None))


@cli.command()
@_config_option
def run(config_path: str | None) -> None:
    """Capture and sync in one process."""
    from cdc.capture.runtime import Capture  # noqa: PLC0415
    from cdc.config import load_config  # noqa: PLC0415
    from cdc.sync.runtime import Sync  # noqa: PLC0415

    config = load_config(config_path)
    _setup_logging(config.logging.level, config.logging.format)
    _run_roles(config, capture=Capture(config), sync=Sync(config))


@cli.command()
@_config_option
@click.argument("name")
def pause(config_path: str | None, name: str) -> None:
    """Pause one integration of the running process (through its admin API)."""
    _control(config_path, name, "pause")


@cli.command()
@_config_option
@click.argument("name")
def resume(config_path: str | None, name: str) -> None:
    """Resume a paused integration of the running process (through its admin API)."""
    _control(config_path, name, "resume")


def _control(config_path: str | None, name: str, action: str) -> None:
    from cdc.config import load_config  # noqa: PLC0415
    from cdc.ops.admin_api import call_admin  # noqa: PLC0415

    config = load_config(config_path)
    body = asyncio.run(call_admin(config, "POST", f"/integrations/{name}/{action}"))
    state = "paused" if body.get("paused") else "running"
    click.echo(f"{name}: {state}")


@cli.command()
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds of load (default: until Ctrl-C).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=50.0,
    show_default=True,
    help="Rows written per second to the sample tables.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary directory (logs) and print where.")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Level of the log file written in the temporary directory (kept with --keep).",
)
def demo(duration: float | None, rate: float, keep: bool, log_level: str) -> None:
    """Run the whole pipeline on throwaway servers with live progress; Ctrl-C cleans up."""
    from cdc.demo.runner import DemoOptions, run_demo  # noqa: PLC0415

    options = DemoOptions(duration_s=duration, rate=rate, keep=keep, log_level=log_level)
    sys.exit(run_demo(options))


@cli.command()
@_config_option
@click.argument("name")
@click.option("--from-beginning", is_flag=True, help="Replay everything the topics retain.")
@click.option(
    "--from-offset",
    "from_offsets",
    multiple=True,
    metavar="TOPIC:PARTITION:OFFSET",
    help="Replay this partition from OFFSET (repeatable; other partitions are left alone).",
)
@click.option("--from-timestamp", metavar="ISO", help="Replay every partition from this time.")
@click.option(
    "--until-offset",
    "until_offsets",
    multiple=True,
    metavar="TOPIC:PARTITION:OFFSET",
    help="Stop that partition before OFFSET (repeatable).",
)
@click.option("--until-timestamp", metavar="ISO", help="Stop before events of this time.")
@click.option("--dry-run", is_flag=True, help="Map and count what would be sent; change nothing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--inbound",
    is_flag=True,
    help="Replay NAME's inbound queue: its records are enqueued again and applied once each.",
)
def replay(
    config_path: str | None,
    name: str,
    *,
    inbound: bool,
    from_beginning: bool,
    from_offsets: tuple[str, ...],
    from_timestamp: str | None,
    until_offsets: tuple[str, ...],
    until_timestamp: str | None,
    dry_run: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Re-apply a stretch of integration NAME's topics; the live group's offsets stay put."""
    from cdc.config import load_config  # noqa: PLC0415
    from cdc.sync.replay import (  # noqa: PLC0415
        ReplayRequest,
        TopicOffset,
        parse_timestamp,
        run_replay_command,
    )

    request = ReplayRequest(
        from_beginning=from_beginning,
        from_offsets=tuple(TopicOffset.parse(o) for o in from_offsets),
        from_timestamp=None if from_timestamp is None else parse_timestamp(from_timestamp),
        until_offsets=tuple(TopicOffset.parse(o) for o in until_offsets),
        until_timestamp=None if until_timestamp is None else parse_timestamp(until_timestamp),
        dry_run=dry_run,
    )
    config = load_config(config_path)
    _setup_logging(config.logging.level, config.logging.format)
    if inbound:
        from cdc.inbound.replay import replay_inbound  # noqa: PLC0415

        summary = replay_inbound(config, name, request)
        click.echo(json.dumps(summary.as_dict(), indent=2) if as_json else summary.human())
        return
    run_replay_command(config, name, request, quiet=quiet, as_json=as_json)


@cli.command()
@_config_option
@click.argument("tables", nargs=-1, required=True)
@click.option("--no-wait", is_flag=True, help="Request the snapshot and exit at once.")
@click.option("--quiet", is_flag=True, help="No progress bar (still waits, unless --no-wait).")
def snapshot(
    config_path: str | None, tables: tuple[str, ...], *, no_wait: bool, quiet: bool
) -> None:
    """Read TABLE... again as op=r events while streaming goes on (incremental, resumable)."""
    from cdc.capture.snapshot.request import run_snapshot_command  # noqa: PLC0415
    from cdc.config import load_config  # noqa: PLC0415

    config = load_config(config_path)
    _setup_logging(config.logging.level, config.logging.format)
    sys.exit(run_snapshot_command(config, tables, wait=not no_wait, quiet=quiet))


@cli.command()
@_config_option
@click.argument("name")
@click.option("--repair", is_flag=True, help="Re-send what differs through the pipeline.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--keys",
    multiple=True,
    metavar="K",
    help="Only these source primary keys (repeatable, or several separated by spaces;"
    " a composite key's columns separated by commas).",
)
@click.option(
    "--wait",
    "wait_s",
    type=float,
    default=120.0,
    show_default=True,
    help="With --repair: seconds to wait for capture to re-read the keys (0: do not wait).",
)
def reconcile(
    config_path: str | None,
    name: str,
    *,
    repair: bool,
    as_json: bool,
    keys: tuple[str, ...],
    wait_s: float,
) -> None:
    """Compare integration NAME's target with its mapped source (exit 3 when they differ)."""
    from cdc.config import load_config  # noqa: PLC0415
    from cdc.ops.reconcile.runner import run_reconcile_command  # noqa: PLC0415

    config = load_config(config_path)
    _setup_logging(config.logging.level, config.logging.format)
    wanted = tuple(k for text in keys for k in text.split())
    sys.exit(
        run_reconcile_command(
            config, name, keys=wanted, repair=repair, as_json=as_json, wait_s=wait_s
        )
    )


@cli.group()
def dlq() -> None:
    """An integration's dead letters: list them, replay them through the current mapper."""


@dlq.command("list")
@_config_option
@click.argument("name")
@click.option("--pending", is_flag=True, help="Only those not replayed yet.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--inbound", is_flag=True, help="The dead letters of NAME's inbound changes.")
def dlq_list(
    config_path: str | None, name: str, *, pending: bool, as_json: bool, inbound: bool
) -> None:
    """List integration NAME's dead letters with their errors."""

    from cdc.config import load_config  # noqa: PLC0415
    from cdc.inbound.dead_letters import list_inbound_dead_letters  # noqa: PLC0415
    from cdc.sync.dead_letters import dead_letter_rows, list_dead_letters, print_dead_letters  # noqa: PLC0415

    config = load_config(config_path)
    if inbound:
        letters = list_inbound_dead_letters(config, name, include_replayed=not pending)
        rows = dead_letter_rows(asyncio.run(letters))
    else:
        rows = asyncio.run(list_dead_letters(config, name, include_replayed=not pending))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_dead_letters(rows)


@dlq.command("replay")
@_config_option
@click.argument("name")
@click.option("--id", "ids", type=int, multiple=True, help="Only this dead letter (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--inbound", is_flag=True, help="Put NAME's inbound dead letters back on its inbound queue."
)
def dlq_replay(
    config_path: str | None, name: str, *, ids: tuple[int, ...], as_json: bool, inbound: bool
) -> None:
    """Re-apply NAME's pending dead letters (default: all) through the current mapper and sink."""
    import json  # noqa: PLC0415

    from cdc.config import load_config  # noqa: PLC0415
    from cdc.inbound.dead_letters import requeue  # noqa: PLC0415
    from cdc.sync.dead_letters import replay_dead_letters  # noqa: PLC0415

    config = load_config(config_path)
    _setup_logging(config.logging.level, config.logging.format)
    if inbound:
        requeued = asyncio.run(requeue(config, name, ids=ids or None))
        if as_json:
            click.echo(json.dumps(requeued.as_dict(), indent=2))
        else:
            click.echo(f"{name}: {len(requeued.requeued)} inbound dead letters re-enqueued")
            if requeued.not_pending:
                listed = ", ".join(map(str, requeued.not_pending))
                click.echo(f"  not pending (unknown or already replayed): {listed}")
        return
    result = asyncio.run(replay_dead_letters(config, name, ids=ids or None))
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(
            f"{name}: {len(result.replayed)} replayed (applied {result.applied}, older"
            f" {result.older}, duplicate {result.duplicate}), {len(result.failed)} failed again"
        )
        for dead_letter, error in result.failed:
            click.echo(f"  {dead_letter}: {error}")
        if result.not_pending:
            listed = ", ".join(map(str, result.not_pending))
            click.echo(f"  not pending (unknown or already replayed): {listed}")
    if result.failed:
        sys.exit(1)


@cli.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
def status(config_path: str | None, *, as_json: bool) -> None:
    """Slot lag, consumer lag, dead letters and the running process's live counters."""
    import json  # noqa: PLC0415

    from cdc.config import load_config  # noqa: PLC0415
    from cdc.ops.status import full_status, print_status  # noqa: PLC0415

    config = load_config(config_path)
    result = asyncio.run(full_status(config))
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_status(result)


@cli.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts).")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds each check may wait for a server.",
)
def check(config_path: str | None, as_json: bool, timeout: float) -> None:
    """Check the config and every server it names; exit 1 if something blocks running."""
    import json  # noqa: PLC0415

    from cdc.config import load_config  # noqa: PLC0415
    from cdc.ops.check.runner import run_checks  # noqa: PLC0415

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        if not as_json:
            raise
        problems = str(exc).splitlines()
        click.echo(json.dumps({"ok": False, "exit_code": 2, "config_errors": problems}, indent=2))
        sys.exit(2)
    report = asyncio.run(run_checks(config, timeout_s=timeout))
    click.echo(report.render_json() if as_json else report.render_text(), nl=as_json)
    sys.exit(report.exit_code)


def _run_roles(config: Config, *, capture: Capture | None = None, sync: Sync | None = None) -> None:
    """Run the given roles, and the admin API unless disabled, until a signal.

    A role that fails stops the others cleanly; the failure is then reported.
    """

    async def main(stop: asyncio.Event) -> None:
        async def role(coro: Awaitable[None]) -> None:
            try:
                await coro
            finally:
                stop.set()

        runs: list[Awaitable[None]] = []
        scheduler = None
        if sync is not None:
            from cdc.ops.reconcile.schedule import ReconcileScheduler  # noqa: PLC0415

            scheduler = ReconcileScheduler(config, sync.names)
            runs.append(scheduler.run(stop))
        if config.admin.enabled:
            from cdc.ops.admin_api import AdminApi  # noqa: PLC0415

            api = AdminApi(config, capture=capture, sync=sync, reconcile=scheduler)
            api.bind()
            runs.append(api.serve(stop))
        if capture is not None:
            runs.append(role(capture.run(stop)))
        if sync is not None:
            runs.append(role(sync.run(stop)))

        def ready() -> bool:
            return (capture is None or capture.stats.connected) and (
                sync is None or sync.ready.is_set()
            )

        runs.append(freeze_when_ready(ready, stop))
        await asyncio.gather(*runs)

    from cdc.core import tracing  # noqa: PLC0415
    from cdc.ops.preflight import preflight  # noqa: PLC0415

    # Before anything is created (slot, publication, consumer group): refused for good exits.
    asyncio.run(preflight(config, capture=capture is not None, sync=sync is not None))
    tracing.configure(config.tracing.settings())  # opt-in (tracing.enabled)
    try:
        _run_until_signalled(main, shutdown_timeout_s=config.process.shutdown_timeout_s)
    finally:
        tracing.shutdown()  # exports what is pending


def _run_until_signalled(
    main: Callable[[asyncio.Event], Awaitable[None]], *, shutdown_timeout_s: float = 30.0
) -> None:
    """Run ``main(stop)`` on a fresh event loop; SIGINT/SIGTERM set ``stop``.

    After the signal, ``main`` has ``shutdown_timeout_s`` to drain and return; past that the
    process exits with status 1 (a watchdog thread, so a blocked call cannot hold it).
    """

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def signalled() -> None:
            if not stop.is_set():
                log.info("stopping: draining in-flight work (at most %.0fs)", shutdown_timeout_s)
                stop.set()
            _start_watchdog(shutdown_timeout_s)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, signalled)
        await main(stop)

    asyncio.run(runner())


_watchdog: threading.Timer | None = None


def _start_watchdog(timeout_s: float) -> None:
    global _watchdog
    if _watchdog is not None:
        return

    def expire() -> None:
        log.error("did not stop within %.0fs of the signal; exiting", timeout_s)
        logging.shutdown()
        os._exit(1)

    _watchdog = threading.Timer(timeout_s, expire)
    _watchdog.daemon = True
    _watchdog.start()


@cli.group()
def registry() -> None:
    """The Confluent-compatible schema registry."""


@registry.command("serve")
@click.option(
    "--storage",
    default="sqlite:///registry.db",
    show_default=True,
    help="sqlite:///PATH or postgresql://... (shared by several instances).",
)
@click.option("--listen", default="127.0.0.1:8081", show_default=True, help="HOST:PORT")
@click.option(
    "--basic-auth-env",
    default=None,
    help="Name of an environment variable holding USER:PASSWORD; enables basic auth.",
)
def registry_serve(storage: str, listen: str, basic_auth_env: str | None) -> None:
    """Serve the schema registry REST API."""
    from schema_registry.server import serve  # noqa: PLC0415

    host, port = _parse_listen(listen)
    basic_auth = None
    if basic_auth_env:
        basic_auth = _env_secret(basic_auth_env)
    serve(storage, host=host, port=port, basic_auth=basic_auth)


def _env_secret(name: str) -> str:
    import os  # noqa: PLC0415

    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"environment variable {name} is not set")
    return value


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ConfigError as exc:
        click.echo(f"cdcsync: configuration error: {exc}", err=True)
        sys.exit(2)
    except CdcsyncError as exc:
        click.echo(f"cdcsync: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
