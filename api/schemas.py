"""Request bodies (strict pydantic models) and the one agent JSON shape."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from aiohttp import web
from idlewatch.core import Health
from idlewatch.durations import DurationError, parse_duration_s, parse_timeout_s
from idlewatch.models import Agent, AgentSpec, AuditEntry, Kind, freeze
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
)

from .errors import ApiError

# the engine wants at least two characters ("Invalid container name (0)" otherwise)
# These patterns are published in the OpenAPI document (ECMA-262 regexes there) and the
# server applies them with fullmatch: ASCII classes only (Python's \d is any Unicode
# digit) and no trailing newline let through (Python's $ matches before one).
CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{1,127}$")
SERVICE_NAME = re.compile(r"^[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: label keys a registration may not set: Docker's own and idlewatch's
RESERVED_LABELS = re.compile(r"^(com\.docker\.|io\.docker\.|org\.dockerproject\.|idlewatch\.)")
#: names the API's own paths take: an agent called so could not be addressed by name
RESERVED_NAMES = frozenset({"running"})


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


_NUMBER = "[0-9]+(\\.[0-9]+)?"
_UNIT = f"({_any_case('ms')}|[sSmMhHdD])"
_WORDS = "|".join(_any_case(w) for w in ("never", "off", "none", "disabled"))
#: a duration in a request body: seconds, parts like 15m, 1h30m, 500ms, or never/off/0,
#: in any case, with spaces around (what the settings accept too, minus exotic floats)
DURATION = re.compile(f"^ *({_WORDS}|{_NUMBER}|({_NUMBER}{_UNIT})+) *$")

#: fields people try to smuggle in; each gets its own clear refusal
PRIVILEGED_FIELDS = {
    "privileged": "privileged mode",
    "binds": "bind mounts",
    "mounts": "mounts",
    "volumes": "volumes",
    "network_mode": "host networking",
    "network": "network choice",
    "cap_add": "capabilities",
    "capabilities": "capabilities",
    "devices": "devices",
    "pid": "host PID namespace",
    "ipc": "host IPC namespace",
    "user": "user override",
    "security_opt": "security options",
    "host_config": "host configuration",
}


def _whole(value: object) -> object:
    """JSON Schema's integers: ``3`` and ``3.0`` alike (never ``true``, never ``3.5``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: an integer field as the OpenAPI document declares it (``{"type": "integer"}``)
WholeNumber = Annotated[StrictInt, BeforeValidator(_whole)]


_WHOLE = re.compile(r"[0-9]{1,15}(\.0*)?")


def whole_number(text: str) -> int | None:
    """An integer query parameter: ``"5"`` or ``"5.0"`` (no sign, exponent, underscore or
    space: what a JSON Schema integer looks like in a URL); None when it is not one."""
    if not _WHOLE.fullmatch(text):
        return None
    return int(float(text))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ReplicasBody(_Strict):
    """``{"replicas": N}`` (optional for start)."""

    replicas: WholeNumber | None = None


class ScaleBody(_Strict):
    """``{"replicas": N}`` (required)."""

    replicas: WholeNumber


class ActivityBody(_Strict):
    """``{"keep_for": "30m"}`` (optional): keep the agent awake that long from now."""

    keep_for: StrictInt | float | StrictStr | None = None

    def keep_for_s(self) -> float | None:
        """The keep-alive in seconds; a 400 naming ``keep_for`` for a bad one."""
        if self.keep_for is None:
            return None
        if isinstance(self.keep_for, str) and not DURATION.fullmatch(self.keep_for):
            raise ApiError(
                400,
                "invalid_body",
                f"expected a duration like 90, '90s', '30m' or '2h', got {self.keep_for!r}",
                "keep_for",
            )
        try:
            seconds = parse_duration_s(self.keep_for)
        except DurationError as exc:
            raise ApiError(400, "invalid_body", str(exc), "keep_for") from None
        return seconds


class RegisterBody(_Strict):
    """A new agent for idlewatch to deploy."""

    name: StrictStr
    image: StrictStr = Field(min_length=1, max_length=512)
    command: list[StrictStr] | None = None
    env: dict[StrictStr, StrictStr] | None = None
    labels: dict[StrictStr, StrictStr] | None = None
    kind: Literal["container", "service"] = "container"
    replicas: WholeNumber = 1
    idle_timeout: StrictInt | float | StrictStr | None = None

    def to_spec(self) -> AgentSpec:
        """The core's spec, after the checks pydantic cannot express."""
        kind = Kind(self.kind)
        pattern = SERVICE_NAME if kind is Kind.SERVICE else CONTAINER_NAME
        if not pattern.fullmatch(self.name):
            raise ApiError(400, "invalid_name", f"{self.name!r} is not a valid {kind} name", "name")
        if self.name in RESERVED_NAMES:
            raise ApiError(
                400,
                "invalid_name",
                f"{self.name!r} is reserved: /api/agents/{self.name} is a listing",
                "name",
            )
        for key in self.env or {}:
            if not ENV_NAME.fullmatch(key):
                raise ApiError(400, "invalid_body", f"{key!r} is not a valid variable name", "env")
        for key in self.labels or {}:
            if RESERVED_LABELS.match(key):
                raise ApiError(
                    400,
                    "invalid_body",
                    f"label {key!r} is reserved (Docker's, or idlewatch's own: use the "
                    "idle_timeout field for the idle timeout)",
                    "labels",
                )
        if kind is Kind.CONTAINER and self.replicas != 1:
            raise ApiError(
                400, "invalid_replicas", "a container runs exactly 1 replica", "replicas"
            )
        return AgentSpec(
            name=self.name,
            image=self.image,
            kind=kind,
            command=tuple(self.command) if self.command is not None else None,
            env=freeze(self.env),
            labels=freeze(self.labels),
            replicas=self.replicas,
            idle_timeout=self._timeout_label(),
        )

    def _timeout_label(self) -> str | None:
        if self.idle_timeout is None:
            return None
        if isinstance(self.idle_timeout, str) and not DURATION.fullmatch(self.idle_timeout):
            raise ApiError(
                400,
                "invalid_body",
                f"expected a duration like 90, '90s', '15m', '1h30m' or 'never', "
                f"got {self.idle_timeout!r}",
                "idle_timeout",
            )
        try:
            seconds = parse_timeout_s(self.idle_timeout)
        except DurationError as exc:
            raise ApiError(400, "invalid_body", str(exc), "idle_timeout") from None
        if seconds is None:
            return "never"
        # the label must read back as the same duration: "1e+23s" would not ("1e+23" does),
        # and :g keeps 6 digits only (100000.5 would come back as 100000)
        short = f"{seconds:g}"
        return f"{short}s" if "e" not in short and float(short) == seconds else repr(seconds)


async def read_body(request: web.Request) -> bytes:
    """The whole body, refusing more than ``max_body_bytes`` (also when mounted as a sub-app)
    and a body that does not arrive within ``request_timeout`` (a slow client)."""
    from .keys import SETTINGS

    settings = request.config_dict[SETTINGS]
    limit = settings.max_body_bytes
    too_large = ApiError(
        413, "payload_too_large", f"the body is larger than max_body_bytes={limit} bytes"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large  # before reading any of it
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.request_timeout):
            # read() with a size returns what has arrived so far: loop to the end
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limit:
                    raise too_large  # a chunked body announces no length
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            "request_timeout",
            f"the body did not arrive within request_timeout={settings.request_timeout:g}s",
        ) from None
    except (ConnectionError, web.RequestPayloadError) as exc:  # gone, or bad chunked framing
        raise ApiError(400, "incomplete_body", f"the body could not be read: {exc}") from None
    return b"".join(chunks)


async def read_json(request: web.Request, model: type[BaseModel], *, required: bool) -> Any:
    """Parse the body into ``model``; a missing optional body gives ``model()``."""
    raw = await read_body(request)
    if not raw.strip():
        if required:
            raise ApiError(400, "missing_body", "this route needs a JSON body")
        return model()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    for key in data:
        if key in PRIVILEGED_FIELDS:
            raise ApiError(
                400,
                "forbidden_field",
                f"idlewatch never accepts {PRIVILEGED_FIELDS[key]} ({key!r})",
                key,
            )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        code = "unknown_field" if err["type"] == "extra_forbidden" else "invalid_body"
        msg = "unknown field" if code == "unknown_field" else err["msg"]
        raise ApiError(400, code, f"{field}: {msg}" if field else msg, field) from None


async def no_body(request: web.Request) -> None:
    """Refuse a body on routes that take none (rather than silently ignoring it)."""
    raw = await read_body(request)
    if raw.strip() and raw.strip() != b"{}":
        raise ApiError(400, "unexpected_body", "this route takes no body")


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


class ReadOnlyDict(dict[str, str]):
    """A dict nobody can change (JSON encoders see a dict): the labels one agent version's
    answers share."""

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("an agent's labels in its JSON are read-only")

    def __reduce__(self) -> tuple[type[dict[str, str]], tuple[dict[str, str]]]:
        return (dict, (dict(self),))  # a copy or a pickle is an ordinary dict

    __setitem__ = __delitem__ = _refuse
    clear = pop = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]


class _Kept(NamedTuple):
    """One agent version's JSON but for ``idle_for``, as a dict and as bytes."""

    agent: Agent
    fixed: dict[str, Any]
    head: bytes  # the fixed part serialized, without its closing brace
    last_activity_s: float


class AgentJson:
    """The one agent shape used by every route and the websocket, for one app (``app``'s
    ``AGENT_JSON``), with each agent's fixed part built once.

    An agent is immutable, so its JSON changes only with the object, except ``idle_for``
    (the last key): the rest is kept per name with the agent it was built from (compared
    by identity; the kept agent cannot be collected, so its identity cannot be reused),
    as a dict and serialized. The listing is the API's biggest answer (bench/load_figures.py:
    500 agents, 100 listings a wave): :meth:`listing_bytes` joins the kept bytes with each
    ``idle_for``, 0.6 us an agent where building and serializing a dict cost 3.5 us.
    Memory: about 1.5 KB per agent. A complete listing drops the names it no longer has;
    past twice the last complete listing (or 1,024) the memo starts over.
    """

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}
        self._fleet = 0  # agents in the last complete listing

    def _get(self, agent: Agent) -> _Kept:
        kept = self._kept.get(agent.name)
        if kept is not None and kept.agent is agent:
            return kept
        fixed = _fixed_json(agent)
        kept = _Kept(agent, fixed, orjson.dumps(fixed)[:-1], agent.last_activity.timestamp())
        if len(self._kept) >= max(1024, 2 * self._fleet):
            self._kept.clear()
        self._kept[agent.name] = kept
        return kept

    def __call__(self, agent: Agent, now: datetime) -> dict[str, Any]:
        """One agent's JSON at ``now``."""
        kept = self._get(agent)
        out = kept.fixed.copy()
        out["idle_for"] = round(max(0.0, now.timestamp() - kept.last_activity_s), 3)
        return out

    def listing(
        self, agents: list[Agent], now: datetime, *, complete: bool
    ) -> list[dict[str, Any]]:
        """Every agent's JSON; ``complete``: ``agents`` is the whole fleet, so names not
        in it are dropped from the memo."""
        out = [self(a, now) for a in agents]
        self._listed(agents, complete)
        return out

    def listing_bytes(self, agents: list[Agent], now: datetime, *, complete: bool) -> bytes:
        """:meth:`listing` serialized as a JSON array (``idle_for`` with 3 decimals)."""
        now_s = now.timestamp()
        get = self._get
        parts = []
        for a in agents:
            kept = get(a)
            idle = now_s - kept.last_activity_s
            parts.append(b'%s,"idle_for":%.3f}' % (kept.head, idle if idle > 0 else 0.0))
        self._listed(agents, complete)
        return b"[" + b",".join(parts) + b"]"

    def _listed(self, agents: list[Agent], complete: bool) -> None:
        if complete:
            self._fleet = len(agents)
            if len(self._kept) > len(agents):
                names = {a.name for a in agents}
                self._kept = {n: v for n, v in self._kept.items() if n in names}


def _fixed_json(agent: Agent) -> dict[str, Any]:
    return {
        "name": agent.name,
        "kind": agent.kind.value,
        "id": agent.id,
        "image": agent.image,
        "status": agent.status.value,
        "replicas": agent.replicas,
        "running": agent.running,
        "last_activity": _iso(agent.last_activity),
        "idle_timeout": agent.idle_timeout_s,
        "labels": ReadOnlyDict(agent.labels),  # shared by every answer: frozen
        "error": agent.error,
        "updated_at": _iso(agent.updated_at),
        "sessions": agent.sessions,
        "keep_until": _iso(agent.keep_until) if agent.keep_until is not None else None,
        "health": agent.health,
        "attached_since": _iso(since) if (since := agent.attached_since) is not None else None,
    }


def health_json(health: Health) -> dict[str, Any]:
    """Readiness as the websocket feed and the dashboard see it (``/readyz`` adds a DB ping)."""
    return {
        "ready": health.ready,
        "reasons": list(health.reasons),
        "checks": {
            "events_stream": health.events_stream,
            "database": health.database,
            "engine_reachable": health.engine_reachable,
        },
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    """One audit entry."""
    return {
        "at": _iso(entry.at),
        "agent": entry.agent,
        "action": entry.action,
        "reason": entry.reason,
        "actor": entry.actor,
        "ok": entry.ok,
        "dry_run": entry.dry_run,
        "detail": entry.detail,
        "replica": entry.replica,
        "finished_at": _iso(entry.finished_at) if entry.finished_at is not None else None,
    }
