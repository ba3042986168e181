"""Websocket clients in their own process: connect N, read everything, report latency and loss.

Run by bench/ws_figures.py. Prints one JSON line of results on stdout.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from datetime import datetime
from typing import Any

import aiohttp
import orjson


def _sent_at(data: dict[str, Any]) -> float:
    if "t" in data:  # the bare baseline
        return float(data["t"])
    return datetime.fromisoformat(data["agent"]["updated_at"].replace("Z", "+00:00")).timestamp()


async def client(
    session: aiohttp.ClientSession,
    url: str,
    counts: list[int],
    i: int,
    lat: list[float],
    ready: asyncio.Event,
    n_ready: list[int],
    n: int,
) -> None:
    ws = await session.ws_connect(url, max_msg_size=0)
    n_ready[0] += 1
    if n_ready[0] == n:
        ready.set()
    sample = i % 10 == 0  # latency from a tenth of the clients keeps this process light
    try:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            if counts[i] == 0 and b'"snapshot"' in msg.data[:40].encode():
                counts[i] = 0
                if msg.data.startswith('{"type":"snapshot"'):
                    continue
            counts[i] += 1
            if sample:
                lat.append(time.time() - _sent_at(orjson.loads(msg.data)))
    finally:
        await ws.close()


async def main(url: str, n: int, expected: int, max_s: float) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    counts = [0] * n
    lat: list[float] = []
    ready = asyncio.Event()
    n_ready = [0]
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        tasks = [
            asyncio.create_task(client(session, url, counts, i, lat, ready, n_ready, n))
            for i in range(n)
        ]
        await asyncio.wait_for(ready.wait(), 120)
        print("READY", flush=True)
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline and min(counts) < expected:
            await asyncio.sleep(0.2)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    lat.sort()
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: -1.0)
    print(
        orjson.dumps(
            {
                "delivered": sum(counts),
                "expected_per_client": expected,
                "min_per_client": min(counts),
                "clients_short": sum(1 for c in counts if c < expected),
                "p50_ms": p(0.5),
                "p99_ms": p(0.99),
                "samples": len(lat),
            }
        ).decode(),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])))
