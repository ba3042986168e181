"""Private network namespaces for the engines idlewatch starts itself (the demo's, the tests').

Why: a ``dockerd`` started with ``--bridge=none`` in the host's network namespace deletes
the host's ``docker0`` at start-up (moby removes the default bridge interface when the
bridge is disabled), and a Swarm manager takes over any ``docker_gwbridge`` it finds
(measured: it put its own address and MAC on a stand-in): the user's own Docker then
fails with "could not find bridge docker0". An engine of ours therefore runs in a network
namespace of its own, so that nothing it creates or removes is the host's. Only loopback
is up there: its containers run with network ``none`` (or on its host network, reachable
from that namespace alone), and its Swarm listens on its own 127.0.0.1.

A test session or a benchmark run also leaves the host's namespace as a whole
(:func:`isolate_this_process`): its servers, proxies and clients use a loopback of their
own, and the engine a few tests share it with (to reach a host-network container from a
proxy) changes nothing of the host's either.

Linux only, and it needs CAP_SYS_ADMIN (root), as running ``dockerd`` does anyway.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Callable

#: from <sched.h>
CLONE_NEWNET = 0x40000000
#: from <linux/sockios.h> and <net/if.h>
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_isolated = False
_host_fd: int | None = None  # the namespace this process left (its children may go back)


class NamespaceError(OSError):
    """A network namespace could not be made or entered."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def new_network_namespace() -> None:
    """Move the calling thread (a fresh child before ``exec``, or a process with one thread)
    into a new network namespace, with its loopback up."""
    if _libc().unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NamespaceError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)} (needs root)")
    _loopback_up()


def hold_network_namespace(pid: int) -> int:
    """A file descriptor that keeps process ``pid``'s network namespace alive (and lets
    others join it) after that process is gone: an engine restarted keeps its network."""
    return os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def join_network_namespace(fd: int) -> Callable[[], None]:
    """A ``preexec_fn`` that moves the child into the namespace held by ``fd``
    (:func:`hold_network_namespace`)."""

    def enter() -> None:
        if _libc().setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NamespaceError(err, f"setns(network namespace): {os.strerror(err)}")

    return enter


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


def isolate_this_process() -> None:
    """Put this whole process (and every child it starts from now on) in a new network
    namespace: for a test session or a benchmark run, whose engines, servers, proxies and
    clients then share one loopback that is not the host's. Call it before any thread
    starts. Idempotent."""
    global _isolated, _host_fd
    if _isolated:
        return
    host = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        new_network_namespace()
    except BaseException:
        os.close(host)
        raise
    _host_fd, _isolated = host, True


def in_host_network() -> Callable[[], None] | None:
    """A ``preexec_fn`` that runs a child in the namespace this process left (a package
    index is reached from there: ``pip wheel`` in a test); None when it left none."""
    return join_network_namespace(_host_fd) if _host_fd is not None else None


def process_is_isolated() -> bool:
    """Whether :func:`isolate_this_process` moved this process into a namespace of its own."""
    return _isolated


def namespace_of(pid: int | str = "self") -> str:
    """The network namespace of a process, as the kernel names it (``net:[4026531840]``)."""
    return os.readlink(f"/proc/{pid}/ns/net")


__all__ = [
    "NamespaceError",
    "hold_network_namespace",
    "join_network_namespace",
    "isolate_this_process",
    "namespace_of",
    "new_network_namespace",
    "process_is_isolated",
]
