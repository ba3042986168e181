"""The data path of wake on a TCP connection (tcp_wake.py): one protocol per side of a
spliced connection, joined so that what one side reads is written to the other.

- No coroutine per chunk: a side reads into a buffer of its own (allocated at its first
  read, BUFFER_MIN bytes, doubled whenever a read fills it, up to BUFFER) and writes it to
  its peer's transport; a full write buffer on one
  side pauses reading on the other (asyncio's flow control, both ways).
- Python 3.12's selector transport keeps a view of what it could not send at once rather
  than a copy: a side whose write was not all sent gives its buffer up and takes a new one.
- The client's side starts with its reading paused (nothing is read before the agent is
  ready); while so, a peek at its socket tells whether it hung up. The agent's side has
  its peer from the start: a server that speaks first is heard.
- A client's end of sending is passed on (a half-close) and the agent's answer still read;
  the agent's end closes both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any, cast

#: a side's read buffer: allocated at its first read at the smallest size, doubled each
#: time a read fills it (a bulk transfer) up to the largest
BUFFER_MIN = 64 * 1024
BUFFER = 1024 * 1024
#: how often a client waiting for its agent's wake is looked at (did it hang up?)
HANG_UP_CHECK_S = 0.5


class Side(asyncio.BufferedProtocol):
    """One side of a spliced connection: what it receives is written to its peer, with
    the peer's flow control (a full write buffer on one side pauses reading the other).

    The client's side (``accepted`` given) starts with its reading paused: nothing is read
    until :meth:`link` joins it to the agent's. The agent's side has its peer from the
    start (a server that speaks first, like SSH, is heard at once). The client's end of
    sending is passed on (a half-close) and the agent's answer still read; the agent's
    end closes both.
    """

    def __init__(
        self,
        accepted: Callable[[Side], None] | None,
        *,
        peer: Side | None = None,
        note: Callable[[], None] = lambda: None,
    ) -> None:
        self._accepted = accepted
        self.transport: asyncio.Transport | None = None
        self.peer = peer
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._note = note
        self._view: memoryview | None = None  # read into; allocated at the first read
        self._size = BUFFER_MIN

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport instances, but behave as one)
        self.transport = cast(asyncio.Transport, transport)
        if self._accepted is not None:
            self.transport.pause_reading()
            self._accepted(self)

    def peername(self) -> object:
        return self.transport.get_extra_info("peername") if self.transport else None

    def hung_up(self) -> bool:
        """Whether the client closed while its reading is paused (the loop does not look
        at its socket then): a peek at it says so without reading anything."""
        if self.lost.done() or self.transport is None:
            return True
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            with socket.socket(fileno=os.dup(sock.fileno())) as look:
                look.setblocking(False)
                return look.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def link(self, upstream: Side) -> None:
        """Join the client's side to the agent's and start reading both ways."""
        self.peer = upstream
        self._note = upstream._note
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._view is None:
            self._view = memoryview(bytearray(self._size))
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        assert self._view is not None
        if nbytes == len(self._view) and self._size < BUFFER:
            self._size *= 2  # a read filled it: the next buffer is larger
        peer = self.peer.transport if self.peer is not None else None
        if peer is not None and not peer.is_closing():
            peer.write(self._view[:nbytes])
            if peer.get_write_buffer_size() or len(self._view) < self._size:
                # what was not sent at once waits in the transport, which (Python 3.12 on)
                # keeps a view of this buffer rather than a copy: it is the transport's
                # now (or the buffer grows)
                self._view = None
            self._note()

    def eof_received(self) -> bool:
        peer = self.peer.transport if self.peer is not None else None
        if self._accepted is None or peer is None:
            return False  # the agent's end: close (connection_lost closes the client)
        if peer.can_write_eof() and not peer.is_closing():
            peer.write_eof()
        return True  # the client half-closed: its answer is still to come

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer.transport if self.peer is not None else None
        if peer is not None and not peer.is_closing():
            peer.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        if self.peer is not None:
            self.peer.close()  # what it still has to send first (bounded: LINGER_S)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        elif self.transport is None and not self.lost.done():
            self.lost.set_result(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        if not self.lost.done():
            self.lost.set_result(None)


async def unless_gone(client: Side, wake: Coroutine[Any, Any, bool]) -> bool:
    """The wake's answer, or False once the client has gone (the wake itself goes on)."""
    task = asyncio.ensure_future(wake)
    try:
        while not task.done():
            await asyncio.wait([task], timeout=HANG_UP_CHECK_S)
            if not task.done() and client.hung_up():
                return False
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return task.result()


__all__ = ["BUFFER", "Side", "unless_gone"]
