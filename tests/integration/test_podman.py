"""The core scenarios on Podman: the real ``idlewatch serve`` on a private rootful
``podman system service`` (its Docker-compatible API, version 1.41), instead of dockerd.

Podman 4.3.1 differs from Docker where idlewatch looks: no ``stop`` event (``die``
only), exec events (``exec``/``exec_died``) without an exec id, no healthcheck timers
(no systemd). These tests show that tracking, stop, wake, idle stop, an exec that holds
its agent, and pause behave as on Docker all the same. Every container runs with network
``none``; every wait is a poll with a deadline.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.private_podman import PrivatePodman, ensure_podman
from tests.waiting import until_sync

from .serveproc import ServeProcess, terminate

TOKEN = "podman-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LABEL = "idlewatch.enable"
IDLE_2S = {"idlewatch.idle-timeout": "2s"}
#: exits at once on SIGTERM, so a stop never waits for the grace period
SLEEPER = ("sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1; done')


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def podman() -> Iterator[PrivatePodman]:
    """One private Podman for the module, with the busybox test image built."""
    ensure_podman()
    pm = PrivatePodman()
    try:
        pm.start()
        pm.build_test_image()
        yield pm
    finally:
        pm.cleanup()


@pytest.fixture(autouse=True)
def clean_engine(podman: PrivatePodman) -> Iterator[None]:
    """Replaces the package's fixture of this name (which starts the private dockerd):
    these tests need no Docker engine. Each starts with no container on the Podman."""
    podman.cli("rm", "-af", "-t", "1")
    yield
    podman.cli("rm", "-af", "-t", "1", check=False)


@pytest.fixture
def serve(podman: PrivatePodman, tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start ``idlewatch serve`` on the Podman (settings as keywords); stopped at the end."""
    started: list[ServeProcess] = []

    def start(**settings: str) -> ServeProcess:
        proc = ServeProcess(
            podman,
            tmp_path,
            api_token=TOKEN,
            stop_timeout="2s",
            **settings,
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


# ---------------------------------------------------------------------- helpers
def run_container(
    podman: PrivatePodman, name: str, *, managed: bool = True, labels: dict[str, str] | None = None
) -> str:
    """Start a sleeper container with no network on the Podman; its id."""
    args = ["run", "-d", "--name", name, "--network", "none", "--stop-timeout", "2"]
    all_labels = {LABEL: "true"} if managed else {}
    all_labels.update(labels or {})
    for k, v in all_labels.items():
        args += ["--label", f"{k}={v}"]
    return podman.cli(*args, podman.image, *SLEEPER)


def api(serve: ServeProcess, method: str, path: str, **kw: Any) -> requests.Response:
    """One call to serve's API with the token."""
    return requests.request(method, f"{serve.url}{path}", headers=AUTH, timeout=60, **kw)


def agents(serve: ServeProcess) -> dict[str, dict[str, Any]]:
    """GET /api/agents, by name."""
    resp = api(serve, "GET", "/api/agents")
    assert resp.status_code == 200, resp.text
    return {a["name"]: a for a in resp.json()}


def agent(serve: ServeProcess, name: str) -> dict[str, Any] | None:
    """GET /api/agents/{name}; None on a 404."""
    resp = api(serve, "GET", f"/api/agents/{name}")
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    found: dict[str, Any] = resp.json()
    return found


def audit(serve: ServeProcess, name: str) -> list[dict[str, Any]]:
    """GET /api/audit of one agent, newest first."""
    resp = api(serve, "GET", f"/api/audit?agent={name}&limit=100")
    assert resp.status_code == 200, resp.text
    entries: list[dict[str, Any]] = resp.json()
    return entries


def explain(serve: ServeProcess, podman: PrivatePodman, name: str) -> str:
    """What each side says, for a failure message: podman's state, the API's agent, the
    audit, and the end of serve's stderr."""
    try:
        state = podman.state(name)
    except Exception as exc:
        state = f"(podman inspect failed: {exc})"
    try:
        seen = agent(serve, name)
        trail = audit(serve, name)
    except Exception as exc:
        seen, trail = None, [{"error": str(exc)}]
    tail = "".join(serve.lines[-40:])
    return (
        f"\npodman says {name} is {state}\nthe API says: {seen}\nthe audit: {trail}\n"
        f"serve's stderr (last 40 lines):\n{tail}"
    )


def wait(
    serve: ServeProcess,
    podman: PrivatePodman,
    name: str,
    check: Callable[[], Any],
    what: str,
    timeout_s: float = 20,
) -> Any:
    """until_sync, with both sides' account of ``name`` when the deadline passes."""
    try:
        return until_sync(check, timeout_s, what, every_s=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}{explain(serve, podman, name)}") from None


def api_status(serve: ServeProcess, name: str) -> str | None:
    found = agent(serve, name)
    return None if found is None else str(found["status"])


# ---------------------------------------------------------------------- scenarios
def test_tracks_managed_containers_and_ignores_the_rest(
    podman: PrivatePodman, serve: Callable[..., ServeProcess]
) -> None:
    """a. One managed container from before serve started, one started after: both listed
    as running; an unlabelled one is never listed and never touched."""
    run_container(podman, "pm-before")
    run_container(podman, "pm-plain", managed=False)
    plain_started = podman.inspect("pm-plain")["State"]["StartedAt"]
    srv = serve()
    run_container(podman, "pm-after")
    listed: set[str] = set()

    def both_running() -> bool:
        now = agents(srv)
        listed.update(now)
        return all(now.get(n, {}).get("status") == "running" for n in ("pm-before", "pm-after"))

    wait(srv, podman, "pm-after", both_running, "pm-before and pm-after running in /api/agents")
    now = agents(srv)
    listed.update(now)
    assert set(now) == {"pm-before", "pm-after"}, now
    assert {a["kind"] for a in now.values()} == {"container"}
    assert "pm-plain" not in listed
    assert api(srv, "GET", "/api/agents/pm-plain").status_code == 404
    assert audit(srv, "pm-plain") == []
    plain = podman.inspect("pm-plain")["State"]
    assert plain["Status"] == "running" and plain["StartedAt"] == plain_started, plain


def test_stop_and_wake(podman: PrivatePodman, serve: Callable[..., ServeProcess]) -> None:
    """b. POST stop stops it (podman: exited; the API: exited, from the die event alone:
    podman sends no stop event); a wake starts it and answers 200 once it runs."""
    run_container(podman, "pm-b")
    srv = serve()
    wait(srv, podman, "pm-b", lambda: api_status(srv, "pm-b") == "running", "pm-b running")
    stopped = api(srv, "POST", "/api/agents/pm-b/stop")
    assert stopped.status_code == 200, stopped.text
    wait(srv, podman, "pm-b", lambda: podman.state("pm-b") == "exited", "podman: pm-b exited")
    wait(srv, podman, "pm-b", lambda: api_status(srv, "pm-b") == "exited", "API: pm-b exited")
    assert [e["actor"] for e in audit(srv, "pm-b") if e["action"] == "stop"] == ["api"]

    t0 = time.monotonic()
    woken = api(srv, "GET", "/api/wake?names=pm-b&timeout=30s")
    took = time.monotonic() - t0
    assert woken.status_code == 200, woken.text + explain(srv, podman, "pm-b")
    assert woken.headers["X-Idlewatch-Status"] == "ready"
    assert woken.json()["status"] == "ready", woken.json()
    assert podman.state("pm-b") == "running", explain(srv, podman, "pm-b")
    assert api_status(srv, "pm-b") == "running"
    assert took < 30


def test_idle_stop(podman: PrivatePodman, serve: Callable[..., ServeProcess]) -> None:
    """c. idle-timeout 2s, sweeps every 1s: serve stops it by itself, and audits it."""
    srv = serve(sweep_interval="1s")
    t_run = time.monotonic()
    run_container(podman, "pm-idle", labels=IDLE_2S)
    wait(srv, podman, "pm-idle", lambda: api_status(srv, "pm-idle") is not None, "pm-idle listed")
    wait(srv, podman, "pm-idle", lambda: podman.state("pm-idle") == "exited", "idle stop", 20)
    assert time.monotonic() - t_run >= 1.8, "not before its idle timeout"
    wait(srv, podman, "pm-idle", lambda: api_status(srv, "pm-idle") == "exited", "API: exited")

    def idle_stop() -> list[dict[str, Any]]:
        return [e for e in audit(srv, "pm-idle") if e["action"] == "stop"]

    entries = wait(srv, podman, "pm-idle", idle_stop, "the idle stop audited", 10)
    assert [(e["actor"], e["ok"], e["dry_run"]) for e in entries] == [("sweep", True, False)], (
        entries
    )


def test_an_open_exec_holds_its_agent(
    podman: PrivatePodman, serve: Callable[..., ServeProcess]
) -> None:
    """d. ``podman exec pm-exec sleep 6`` under an idle timeout of 2s: running while the
    exec runs (one session, counted from its ``exec`` event, which names no exec: idlewatch
    reads the container's sessions after it), stopped after its timeout once it ended."""
    srv = serve(sweep_interval="1s")
    run_container(podman, "pm-exec", labels=IDLE_2S)
    wait(srv, podman, "pm-exec", lambda: api_status(srv, "pm-exec") == "running", "running")
    touched = api(srv, "POST", "/api/agents/pm-exec/activity")  # the full 2s from now
    assert touched.status_code == 200, touched.text
    t_exec = time.monotonic()
    exec_proc = subprocess.Popen(
        podman.command("exec", "pm-exec", "sleep", "6"),
        env=podman.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def sessions() -> int:
            found = agent(srv, "pm-exec")
            return 0 if found is None else int(found["sessions"])

        # podman's ``exec`` event comes about 0.2 s after the CLI starts; 1.5 s is well
        # before the idle deadline (2 s after the touch) and any sweep's own look, so the
        # session is counted from the event, not found by the sweep's busy check
        wait(srv, podman, "pm-exec", lambda: sessions() == 1, "one open session", 1.5)
        samples = 0
        while exec_proc.poll() is None:
            state = podman.state("pm-exec")
            held = sessions()
            if exec_proc.poll() is not None:
                break  # (the exec ended meanwhile: this sample may see it ended)
            assert state == "running", f"stopped during the exec{explain(srv, podman, 'pm-exec')}"
            if time.monotonic() - t_exec < 5:  # (well before the exec's end)
                assert held == 1, f"sessions {held} during the exec" + explain(
                    srv, podman, "pm-exec"
                )
                samples += 1
            time.sleep(0.2)
        t_end = time.monotonic()
        _, err = exec_proc.communicate(timeout=10)
        assert exec_proc.returncode == 0, f"podman exec failed ({exec_proc.returncode}): {err}"
        assert t_end - t_exec >= 5.5, "the exec ran its 6s"
        assert samples >= 5, samples
    finally:
        terminate(exec_proc, 10)  # (the CLI we started, when a check failed mid-exec)
        if exec_proc.stderr is not None:
            exec_proc.stderr.close()
    wait(srv, podman, "pm-exec", lambda: podman.state("pm-exec") == "exited", "idle stop", 20)
    stopped_after = time.monotonic() - t_end
    assert stopped_after >= 1.0, f"stopped {stopped_after:.1f}s after the exec ended"
    wait(srv, podman, "pm-exec", lambda: api_status(srv, "pm-exec") == "exited", "API: exited")
    stops = [e for e in audit(srv, "pm-exec") if e["action"] == "stop"]
    assert [e["actor"] for e in stops] == ["sweep"], stops


def test_pause_and_wake_the_paused(
    podman: PrivatePodman, serve: Callable[..., ServeProcess]
) -> None:
    """e. POST pause pauses it (podman and the API: paused); a wake unpauses it (200)."""
    run_container(podman, "pm-pause")
    srv = serve()
    wait(srv, podman, "pm-pause", lambda: api_status(srv, "pm-pause") == "running", "running")
    paused = api(srv, "POST", "/api/agents/pm-pause/pause")
    assert paused.status_code == 200, paused.text + explain(srv, podman, "pm-pause")
    wait(srv, podman, "pm-pause", lambda: podman.state("pm-pause") == "paused", "podman: paused")
    wait(srv, podman, "pm-pause", lambda: api_status(srv, "pm-pause") == "paused", "API: paused")
    woken = api(srv, "GET", "/api/wake?names=pm-pause&timeout=30s")
    assert woken.status_code == 200, woken.text + explain(srv, podman, "pm-pause")
    assert woken.headers["X-Idlewatch-Status"] == "ready"
    assert podman.state("pm-pause") == "running", explain(srv, podman, "pm-pause")
    assert api_status(srv, "pm-pause") == "running"
    actions = [(e["action"], e["actor"]) for e in audit(srv, "pm-pause")]
    assert ("pause", "api") in actions, actions
