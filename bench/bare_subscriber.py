"""The baseline of the CPU figure: aiodocker's own events subscriber with a no-op handler.

    python -m bench.bare_subscriber DOCKER_URL

It reads the events stream serve reads (containers and services) and does nothing with
them, in a process of its own: what reading the engine's stream costs a Python process
on this machine, at the same moment and for the same events as serve (the same reader as
the ingest figure's ceiling). Prints ``ready`` once the engine has answered the
subscription; on SIGTERM, prints how many events it read and exits 0. It exits non-zero
if the subscription fails or is not answered within 30 s, or if the stream ends before
SIGTERM (a baseline that stopped reading would read low, and serve's ratio to it high).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

import aiodocker

READY_TIMEOUT_S = 30.0


async def main(url: str) -> int:
    docker = aiodocker.Docker(url=url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    count = 0
    try:
        sub = docker.events.subscribe(filters={"type": ["container", "service"]})

        async def read() -> None:
            nonlocal count
            while await sub.get() is not None:
                count += 1

        reader = asyncio.create_task(read())
        # aiodocker (0.24 to 0.27 at least) sets `json_stream` once the engine has sent
        # the response's headers; its `task` ends with the error if the request failed
        deadline = time.monotonic() + READY_TIMEOUT_S
        while docker.events.json_stream is None:
            task = docker.events.task
            if task is not None and task.done():
                print(f"the subscription failed: {task.exception()!r}", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"no answer to the subscription in {READY_TIMEOUT_S:g}s", file=sys.stderr)
                return 1
            await asyncio.sleep(0.01)
        print("ready", flush=True)
        await asyncio.wait(
            [asyncio.create_task(stop.wait()), reader], return_when=asyncio.FIRST_COMPLETED
        )
        if not stop.is_set():
            print(f"the events stream ended after {count} events", file=sys.stderr)
            return 1
        # (nothing else is written to stdout: the harness reads the count as it is)
        print(count, flush=True)
        reader.cancel()
        return 0
    finally:
        with contextlib.suppress(Exception):  # (a failed subscription: said above)
            await docker.events.stop()
        await docker.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
