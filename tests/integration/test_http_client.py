"""The HTTP sink's client against real sockets: keep-alive, answer framing, failures, TLS."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from cdc.sync.sinks.http_client import HttpClient, HttpTransportError

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer:
    """A raw HTTP/1.1 server: reads each request whole, answers it with ``reply``."""

    def __init__(self, reply: Reply, ssl_context: ssl.SSLContext | None = None) -> None:
        self.reply = reply
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> ScriptedServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                await self.reply(request, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def ok(request: bytes, writer: asyncio.StreamWriter) -> None:
    body = b'{"ok":true}'
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()


def test_requests_reuse_keep_alive_connections_up_to_the_limit() -> None:
    async def main() -> None:
        async with ScriptedServer(ok) as server:
            client = HttpClient(limit=4, timeout_s=5)
            url = f"http://127.0.0.1:{server.port}/contacts/1"
            answers = await asyncio.gather(
                *(client.request("PUT", url, body=b"{}", headers={}) for _ in range(200))
            )
            await client.close()
        assert [a.status for a in answers] == [200] * 200
        assert answers[0].content == b'{"ok":true}'
        assert 1 <= server.connections <= 4
        assert len(server.requests) == 200

    asyncio.run(main())


def test_an_idle_connection_the_server_closed_is_replaced_without_an_error() -> None:
    async def close_after_answer(request: bytes, writer: asyncio.StreamWriter) -> None:
        await ok(request, writer)
        writer.close()  # no "Connection: close": the client finds out on its next request

    async def main() -> None:
        async with ScriptedServer(close_after_answer) as server:
            client = HttpClient(limit=1, timeout_s=5)
            url = f"http://127.0.0.1:{server.port}/x"
            for _ in range(3):
                answer = await client.request("PUT", url, body=b"{}", headers={})
                assert answer.status == 200
                await asyncio.sleep(0.05)
            await client.close()
        assert server.connections == 3

    asyncio.run(main())


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nConnection: close\r\n\r\nhello world",
        b"HTTP/1.1 201 Created\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s"
        % (len(gzip.compress(b"hello world")), gzip.compress(b"hello world")),
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\nhello world",
    ],
    ids=["chunked", "until-close", "gzip", "after-early-hints"],
)
def test_answers_are_read_whole_however_they_are_framed(raw: bytes) -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(raw)
        await writer.drain()
        if b"Connection: close" in raw:
            writer.close()

    async def main() -> None:
        async with ScriptedServer(reply) as server:
            client = HttpClient(limit=2, timeout_s=5)
            url = f"http://127.0.0.1:{server.port}/x"
            for _ in range(2):
                answer = await client.request("GET", url)
                assert (answer.status, answer.content) == (201, b"hello world")
            await client.close()

    asyncio.run(main())


def test_a_server_that_never_answers_times_out_and_its_connection_is_not_reused() -> None:
    async def silent(request: bytes, writer: asyncio.StreamWriter) -> None:
        if b"/slow" in request:
            await asyncio.sleep(3)
        await ok(request, writer)

    async def main() -> None:
        async with ScriptedServer(silent) as server:
            client = HttpClient(limit=1, timeout_s=0.3)
            base = f"http://127.0.0.1:{server.port}"
            with pytest.raises(TimeoutError):
                await client.request("PUT", base + "/slow", body=b"{}", headers={})
            answer = await client.request("PUT", base + "/fast", body=b"{}", headers={})
            assert answer.status == 200
            await client.close()
        assert server.connections == 2

    asyncio.run(main())


def test_a_refused_connection_and_a_garbled_answer_are_transport_errors() -> None:
    async def garbage(request: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()

    async def main() -> None:
        client = HttpClient(limit=1, timeout_s=2)
        async with ScriptedServer(garbage) as server:
            port = server.port
            with pytest.raises(HttpTransportError, match="not valid HTTP"):
                await client.request("GET", f"http://127.0.0.1:{port}/")
        await asyncio.sleep(0.05)
        with pytest.raises(HttpTransportError, match="cannot connect"):
            await client.request("GET", f"http://127.0.0.1:{port}/")
        await client.close()

    asyncio.run(main())


def test_headers_with_line_breaks_are_refused_and_credentials_become_basic_auth() -> None:
    async def main() -> None:
        async with ScriptedServer(ok) as server:
            client = HttpClient(limit=1, timeout_s=2)
            url = f"http://127.0.0.1:{server.port}/x"
            with pytest.raises(ValueError, match="line break"):
                await client.request("PUT", url, body=b"{}", headers={"X-Key": "a\r\nX-Evil: 1"})
            userinfo_url = f"http://us%40er:p%3Ass@127.0.0.1:{server.port}/x"
            await client.request("GET", userinfo_url)
            await client.request("GET", userinfo_url, headers={"Authorization": "Bearer t"})
            await client.close()
        assert len(server.requests) == 2
        assert b"Authorization: Basic dXNAZXI6cDpzcw==\r\n" in server.requests[0]  # us@er:p:ss
        assert b"Authorization: Bearer t\r\n" in server.requests[1]
        assert b"Basic" not in server.requests[1]
        assert b"X-Evil" not in b"".join(server.requests)

    asyncio.run(main())


def test_https_checks_the_servers_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def main() -> None:
        async with ScriptedServer(ok, ssl_context=server_ctx) as server:
            url = f"https://localhost:{server.port}/x"
            trusting = HttpClient(
                limit=1, timeout_s=5, ssl_context=ssl.create_default_context(cafile=str(cert))
            )
            assert (await trusting.request("GET", url)).status == 200
            await trusting.close()
            default = HttpClient(limit=1, timeout_s=5)
            with pytest.raises(HttpTransportError, match="CERTIFICATE_VERIFY_FAILED"):
                await default.request("GET", url)
            await default.close()

    asyncio.run(main())
