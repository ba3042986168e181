"""The baseline of the CPU figure: aiodocker's own events subscriber with a no-op handler.

    python -m bench.bare_subscriber DOCKER_URL

It reads the events stream serve reads (containers and services) and does nothing with
them, in a process of its own: what reading the engine's stream costs a Python process
on this machine, at the same moment and for the same events as serve (the same reader as
the ingest figure's ceiling). Prints ``ready`` once the engine has answered the
subscription; on SIGTERM, prints how many events it read and exits.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aiodocker


async def main(url: str) -> None:
    docker = aiodocker.Docker(url=url)
    count = 0
    sub = docker.events.subscribe(filters={"type": ["container", "service"]})

    async def read() -> None:
        nonlocal count
        while await sub.get() is not None:
            count += 1

    reader = asyncio.create_task(read())
    while docker.events.json_stream is None:  # set once the engine answered
        if docker.events.task is not None and docker.events.task.done():
            raise SystemExit(f"the subscription failed: {docker.events.task.exception()}")
        await asyncio.sleep(0.01)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    print(count, flush=True)
    reader.cancel()
    await docker.events.stop()
    await docker.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
