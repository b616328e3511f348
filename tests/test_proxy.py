"""Token acquisition through an HTTPS (CONNECT) proxy, and the reason when the proxy fails.

A tiny CONNECT proxy on loopback relays bytes to the simulated identity platform; TLS stays
end to end (the exporter verifies the simulator's certificate through the tunnel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from exporter.config import Config
from exporter.reasons import Reason
from tests.simenv import Env, env_fixture, runtime_for

env = env_fixture(delegated_login=False)


@contextlib.asynccontextmanager
async def connect_proxy(refuse: bool = False) -> AsyncIterator[tuple[int, list[str]]]:
    seen: list[str] = []

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        line = request.split(b"\r\n", 1)[0].decode()
        seen.append(line)
        method, target, _ = line.split(" ", 2)
        if refuse or method != "CONNECT":
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        up_r, up_w = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], seen
    finally:
        server.close()
        await server.wait_closed()


def with_proxy(env: Env, proxy: str) -> Config:
    raw = json.loads(env.config().model_dump_json())
    raw["defaults"]["https"]["proxy"] = proxy
    return Config.model_validate(raw)


async def test_token_through_connect_proxy(env: Env) -> None:
    async with connect_proxy() as (port, seen):
        rt = await runtime_for(with_proxy(env, f"http://127.0.0.1:{port}"))
        result = await rt.run_token_probe("app")
        assert result.success, (result.reason, result.detail)
    idp_port = env.sim.idp_port
    assert any(line.startswith(f"CONNECT 127.0.0.1:{idp_port} ") for line in seen), seen
    # behind a proxy the login host is not probed directly (it would mislead)
    assert not any(k[1] == "127.0.0.1" and k[2] == str(idp_port) for k in rt.unique_endpoints(rt.config))


async def test_proxy_refusing_connect_is_proxy_error(env: Env) -> None:
    async with connect_proxy(refuse=True) as (port, seen):
        rt = await runtime_for(with_proxy(env, f"http://127.0.0.1:{port}"))
        result = await rt.run_token_probe("app")
    assert seen, "the request must have gone to the proxy"
    assert result.reason is Reason.PROXY_ERROR, (result.reason, result.detail)


async def test_proxy_down_is_proxy_error(env: Env) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    rt = await runtime_for(with_proxy(env, f"http://127.0.0.1:{dead}"))
    result = await rt.run_token_probe("app")
    assert result.reason is Reason.PROXY_ERROR, (result.reason, result.detail)
