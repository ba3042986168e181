"""Real reverse proxies for the wake tests: Debian's nginx and Caddy, run privately on
loopback from the very files in config/ (only addresses and the token are changed), and a
stub for an agent's HTTP side that answers only while its container runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiodocker
from aiohttp import web

from tests.private_engine import PrivateEngine, free_port
from tests.waiting import until_sync

CONFIG = Path(__file__).resolve().parents[2] / "config"
NGINX_CONF = CONFIG / "nginx-wake.conf"
CADDYFILE = CONFIG / "Caddyfile.wake"
APP_HOST = "app.example.test"
TOKEN_PLACEHOLDER = "CHANGE-ME-wake-token"


def wait_listening(port: int, timeout_s: float, what: str) -> None:
    """Until a loopback port accepts, with a deadline."""

    def accepts() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    until_sync(accepts, timeout_s, f"{what} to listen on 127.0.0.1:{port}")


@dataclass
class Proxy:
    """One running proxy: where to send requests for the app's host."""

    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    root: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def host_header(self, host: str = APP_HOST) -> str:
        return f"{host}:{self.port}"

    def stop(self) -> str:
        """Stop it and return its log (for failure messages)."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        shutil.rmtree(self.root, ignore_errors=True)
        return text


def _render(text: str, *, idlewatch_port: int, upstream_port: int, token: str) -> str:
    return (
        text.replace("127.0.0.1:8080", f"127.0.0.1:{idlewatch_port}")
        .replace("127.0.0.1:9000", f"127.0.0.1:{upstream_port}")
        .replace(TOKEN_PLACEHOLDER, token)
    )


def start_nginx(*, idlewatch_port: int, upstream_port: int, token: str) -> Proxy:
    """nginx (nginx-light) from config/nginx-wake.conf, inside a private main config."""
    root = Path(tempfile.mkdtemp(prefix="iw-nginx-"))
    os.chmod(root, 0o755)  # the workers (nobody) read and write their temp dirs here
    port = free_port()
    snippet = _render(
        NGINX_CONF.read_text(),
        idlewatch_port=idlewatch_port,
        upstream_port=upstream_port,
        token=token,
    ).replace("127.0.0.1:8081", f"127.0.0.1:{port}")
    (root / "wake.conf").write_text(snippet)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / sub).mkdir()
        os.chmod(root / sub, 0o777)
    log = root / "error.log"
    (root / "nginx.conf").write_text(
        f"""daemon off;
pid {root}/nginx.pid;
error_log {log} info;
worker_processes 1;
events {{ worker_connections 512; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    include {root}/wake.conf;
}}
"""
    )
    with open(root / "stderr.log", "wb") as err:  # the child keeps its own copy
        proc = subprocess.Popen(
            ["nginx", "-p", str(root), "-c", str(root / "nginx.conf")],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    proxy = Proxy("nginx", port, proc, root, log)
    try:
        wait_listening(port, 15, "nginx")
    except AssertionError:
        raise AssertionError(proxy.stop() + (root / "stderr.log").read_text()) from None
    return proxy


def start_caddy(*, idlewatch_port: int, upstream_port: int, token: str) -> Proxy:
    """Caddy from config/Caddyfile.wake, with its state in a private directory."""
    root = Path(tempfile.mkdtemp(prefix="iw-caddy-"))
    port = free_port()
    caddyfile = _render(
        CADDYFILE.read_text(),
        idlewatch_port=idlewatch_port,
        upstream_port=upstream_port,
        token=token,
    ).replace(":8082", f":{port}")
    (root / "Caddyfile").write_text(caddyfile)
    log = root / "caddy.log"
    env = {
        **os.environ,
        "HOME": str(root),
        "XDG_DATA_HOME": str(root / "data"),
        "XDG_CONFIG_HOME": str(root / "config"),
    }
    with open(log, "wb") as err:  # the child keeps its own copy
        proc = subprocess.Popen(
            ["caddy", "run", "--config", str(root / "Caddyfile"), "--adapter", "caddyfile"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    proxy = Proxy("caddy", port, proc, root, log)
    try:
        wait_listening(port, 15, "caddy")
    except AssertionError:
        raise AssertionError(proxy.stop()) from None
    return proxy


@dataclass
class Upstream:
    """An agent's HTTP side on loopback: answers 200 only while its container runs (and is
    healthy when it has a healthcheck), and records what it saw at each request."""

    engine: PrivateEngine
    container: str
    port: int = field(default_factory=free_port)
    seen: list[dict[str, Any]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _docker: aiodocker.Docker | None = None

    async def start(self) -> Upstream:
        self._docker = aiodocker.Docker(url=self.engine.url)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._docker is not None
        info = await (await self._docker.containers.get(self.container)).show()
        state = info["State"]
        health = (state.get("Health") or {}).get("Status")
        self.seen.append({"running": state["Running"], "health": health})
        if not state["Running"] or health not in (None, "healthy"):
            return web.Response(status=502, text="the agent is not up")
        return web.Response(text=f"hello from {self.container}")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._docker is not None:
            await self._docker.close()


__all__ = ["APP_HOST", "Proxy", "Upstream", "start_caddy", "start_nginx", "wait_listening"]
