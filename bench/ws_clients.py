"""Feed clients in their own process: connect N, read everything, report latency and loss
(websockets; event streams for a URL ending in /api/events).

Run by bench/ws_figures.py and bench/load_figures.py through :func:`spawn` and
:func:`results`. It prints READY once every client has connected (or failed to), then reads
until each client has ``expected`` changes or ``max_s`` passed; with ``expected`` < 0 it reads
until a line arrives on stdin (:func:`results` with ``stop=True`` sends it). Then it prints one
JSON line of results on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import orjson

UNTIL_STOPPED = -1


def _sent_at(data: dict[str, Any]) -> float:
    if "t" in data:  # the bare baseline
        return float(data["t"])
    return datetime.fromisoformat(data["agent"]["updated_at"].replace("Z", "+00:00")).timestamp()


@dataclass
class Tally:
    """What the clients of this process saw."""

    n: int
    counts: list[int] = field(init=False)
    lat: list[float] = field(default_factory=list)
    connected: int = 0
    connect_errors: int = 0
    disconnected: int = 0  # clients whose socket ended before we stopped reading
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.counts = [0] * self.n

    def settled(self) -> None:
        """One more client connected or failed; READY once all have."""
        if self.connected + self.connect_errors == self.n:
            self.ready.set()


async def sse_client(session: aiohttp.ClientSession, url: str, tally: Tally, i: int) -> None:
    """One event-stream client (GET /api/events): the same counts as a websocket's."""
    try:
        resp = await session.get(url, timeout=aiohttp.ClientTimeout(total=None))
    except (aiohttp.ClientError, OSError):
        tally.connect_errors += 1
        tally.settled()
        return
    if resp.status != 200:
        tally.connect_errors += 1
        tally.settled()
        resp.release()
        return
    tally.connected += 1
    tally.settled()
    sample = i % 10 == 0
    counts = tally.counts
    rest = b""
    try:
        # whole events, split where a blank line ends one: read as the data comes (a line
        # at a time cost this process more than the websocket's frames, and it is shared
        # by 1,000 clients: what it measured was its own backlog)
        async for chunk in resp.content.iter_any():
            *events, rest = (rest + chunk).split(b"\n\n")
            for event in events:
                start = event.find(b"data: ")
                if start < 0:
                    continue  # retry, comments
                data = event[start + 6 :]
                if data.startswith(b'{"type":"health"'):
                    continue
                if counts[i] == 0 and data.startswith(b'{"type":"snapshot"'):
                    continue
                counts[i] += 1
                if sample:
                    tally.lat.append(time.time() - _sent_at(orjson.loads(data)))
        tally.disconnected += 1
    finally:
        resp.release()


async def client(session: aiohttp.ClientSession, url: str, tally: Tally, i: int) -> None:
    """One client: count the changes after the snapshot; sample latency on a tenth of them."""
    if url.endswith("/api/events"):
        await sse_client(session, url, tally, i)
        return
    try:
        ws = await session.ws_connect(url, max_msg_size=0)
    except (aiohttp.ClientError, OSError):
        tally.connect_errors += 1
        tally.settled()
        return
    tally.connected += 1
    tally.settled()
    sample = i % 10 == 0  # latency from a tenth of the clients keeps this process light
    counts = tally.counts
    try:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            if counts[i] == 0 and msg.data.startswith('{"type":"snapshot"'):
                continue
            if msg.data.startswith('{"type":"health"'):  # readiness news, not a change
                continue
            counts[i] += 1
            if sample:
                tally.lat.append(time.time() - _sent_at(orjson.loads(msg.data)))
        tally.disconnected += 1  # not cancelled: the server closed or dropped it
    finally:
        await ws.close()


async def _stop_line() -> None:
    """Until a line (or EOF) on stdin, without a thread that would outlive the loop."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()


async def _read_until(tally: Tally, expected: int, max_s: float) -> None:
    if expected < 0:
        with contextlib.suppress(TimeoutError):  # max_s bounds a parent that never says STOP
            await asyncio.wait_for(_stop_line(), max_s)
        return
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline and min(tally.counts) < expected:
        await asyncio.sleep(0.2)


async def main(url: str, n: int, expected: int, max_s: float, token: str = "") -> None:
    """Connect ``n`` clients (with ``token`` in the Authorization header), say READY,
    read, print the results line."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tally = Tally(n)
    conn = aiohttp.TCPConnector(limit=0)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
        tasks = [asyncio.create_task(client(session, url, tally, i)) for i in range(n)]
        await asyncio.wait_for(tally.ready.wait(), 120)
        print("READY", flush=True)
        await _read_until(tally, expected, max_s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    print(orjson.dumps(_report(tally, expected)).decode(), flush=True)


def _report(tally: Tally, expected: int) -> dict[str, Any]:
    lat = sorted(tally.lat)

    def p(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else -1.0

    counts = tally.counts
    return {
        "delivered": sum(counts),
        "expected_per_client": expected,
        "min_per_client": min(counts),
        "max_per_client": max(counts),
        "clients_short": sum(1 for c in counts if c < expected),
        "connected": tally.connected,
        "connect_errors": tally.connect_errors,
        "disconnected": tally.disconnected,
        "p50_ms": p(0.5),
        "p99_ms": p(0.99),
        "samples": len(lat),
    }


async def spawn(
    url: str, n: int, expected: int, max_s: float, token: str = ""
) -> asyncio.subprocess.Process:
    """Start the clients' process; returns once every client has connected or failed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.ws_clients",
        url,
        str(n),
        str(expected),
        str(max_s),
        token,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 180)
    if line.strip() != b"READY":
        await _end(proc)
        raise RuntimeError(f"the websocket clients did not start: {line!r}")
    return proc


async def results(proc: asyncio.subprocess.Process, *, stop: bool = False) -> dict[str, Any]:
    """The clients' results line; with ``stop``, first tell them to stop reading."""
    assert proc.stdout is not None and proc.stdin is not None
    if stop:
        proc.stdin.write(b"STOP\n")
        await proc.stdin.drain()
    proc.stdin.close()
    out = await proc.stdout.read()
    await proc.wait()
    data: dict[str, Any] = orjson.loads(out.strip().splitlines()[-1])
    return data


async def _end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


if __name__ == "__main__":
    token = sys.argv[5] if len(sys.argv) > 5 else ""
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), token))
