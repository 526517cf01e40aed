"""HTTP client benchmark: the HTTP sink's own client against httpx, at the sink's load.

Run: ``.venv/bin/python bench/http_client.py [--requests 20000] [--concurrency 16]
[--rate 2000] [--live-seconds 5] [--runs 3]``

The HTTP sink sends one ``PUT`` with a small JSON body per entity, at most
``max_in_flight`` (16) at a time, over keep-alive connections. This benchmark sends the
same requests from this process to a target in another process (uvicorn with httptools,
answering 200 at once), once with ``cdc.sync.sinks.http_client.HttpClient`` and once with
``httpx.AsyncClient`` (limits set to the same concurrency), alternating which goes first:

1. backlog: ``--requests`` PUTs as fast as the client goes; prints requests/s and the
   client process's CPU per request (user + system);
2. live: PUTs paced at ``--rate`` per second for ``--live-seconds``; prints the cores the
   client process used (CPU seconds per wall second), the p99 request latency and how
   many requests timed out (10 s) because the client could not keep up.

Medians over ``--runs`` are printed, with the ratio httpx / own client; nothing is
asserted. The decision it informs (keep a client of our own or not) is in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.sync.sinks.http_client import HttpClient

Send = Callable[[str, bytes], Awaitable[int]]


async def _target_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _serve(port: int) -> None:
    import uvicorn  # noqa: PLC0415

    uvicorn.run(
        _target_app,
        host="127.0.0.1",
        port=port,
        http="httptools",
        log_level="error",
        lifespan="off",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit("the target server did not start")


def _body(i: int) -> bytes:
    return json.dumps(
        {
            "id": str(i),
            "email": f"person{i}@example.com",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "version": f"{1000 + i}:0",
        }
    ).encode()


class Own:
    name = "own client"

    def __init__(self, concurrency: int) -> None:
        self.client = HttpClient(limit=concurrency, timeout_s=10.0)

    async def send(self, url: str, body: bytes) -> int:
        headers = {"Content-Type": "application/json", "Idempotency-Key": url}
        response = await self.client.request("PUT", url, body=body, headers=headers)
        return response.status

    async def close(self) -> None:
        await self.client.close()


class Httpx:
    name = "httpx"

    def __init__(self, concurrency: int) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self.client = httpx.AsyncClient(limits=limits, timeout=10.0)

    async def send(self, url: str, body: bytes) -> int:
        headers = {"Content-Type": "application/json", "Idempotency-Key": url}
        response = await self.client.put(url, content=body, headers=headers)
        return response.status_code

    async def close(self) -> None:
        await self.client.aclose()


async def _backlog(
    client: Own | Httpx, base: str, requests: int, concurrency: int
) -> dict[str, float]:
    queue = iter(range(requests))

    async def lane() -> None:
        for i in queue:
            status = await client.send(f"{base}/contacts/{i}", _body(i))
            assert status == 200, status

    await client.send(f"{base}/contacts/warm", _body(0))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"rps": requests / wall, "cpu_us": cpu / requests * 1e6}


async def _live(client: Own | Httpx, base: str, rate: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    failed = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        nonlocal failed
        started = time.perf_counter()
        try:
            status = await client.send(f"{base}/contacts/{i}", _body(i))
        except Exception:  # a client that cannot keep up times out: counted, not fatal
            failed += 1
            return
        assert status == 200, status
        latencies.append(time.perf_counter() - started)

    await client.send(f"{base}/contacts/warm", _body(0))
    total = int(rate * seconds)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(total):
        due = wall0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else float("nan")
    return {"cores": cpu / wall, "p99_ms": p99, "failed": failed}


async def _measure(
    kind: type[Own] | type[Httpx], base: str, args: argparse.Namespace
) -> dict[str, float]:
    client = kind(args.concurrency)
    try:
        figures = await _backlog(client, base, args.requests, args.concurrency)
        figures.update(await _live(client, base, args.rate, args.live_seconds))
        return figures
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--live-seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    server.start()
    try:
        _wait_listening(port)
        base = f"http://127.0.0.1:{port}"
        results: dict[str, list[dict[str, float]]] = {Own.name: [], Httpx.name: []}
        for run in range(args.runs):
            order: list[type[Own] | type[Httpx]] = [Own, Httpx] if run % 2 == 0 else [Httpx, Own]
            for kind in order:
                figures = asyncio.run(_measure(kind, base, args))
                results[kind.name].append(figures)
                print(
                    f"run {run + 1} {kind.name:10}  backlog {figures['rps']:8,.0f} req/s "
                    f"{figures['cpu_us']:6.1f} us CPU/req   live {args.rate}/s: "
                    f"{figures['cores']:.3f} cores, p99 {figures['p99_ms']:.1f} ms, "
                    f"{figures['failed']:.0f} timed out",
                    flush=True,
                )
    finally:
        server.terminate()
        server.join(5)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(
        f"\nmedians of {args.runs} runs "
        f"({args.requests:,} backlog PUTs, {args.concurrency} in flight)"
    )
    print(f"{'':12}{'req/s':>10}{'us CPU/req':>12}{'live cores':>12}{'live p99 ms':>13}")
    for name in (Own.name, Httpx.name):
        print(
            f"{name:12}{median(name, 'rps'):10,.0f}{median(name, 'cpu_us'):12.1f}"
            f"{median(name, 'cores'):12.3f}{median(name, 'p99_ms'):13.1f}"
        )
    cpu_ratio = median(Httpx.name, "cpu_us") / median(Own.name, "cpu_us")
    cores_ratio = median(Httpx.name, "cores") / median(Own.name, "cores")
    print(f"httpx / own: CPU per request x{cpu_ratio:.2f}, live cores x{cores_ratio:.2f}")


if __name__ == "__main__":
    main()
