"""What a request brings: its body (read within the limits, parsed into strict pydantic
models) and its query parameters, each refused with a 400 naming the field. The one
place every route reads its input from."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Collection, Iterator
from typing import Annotated, Any, Literal

import orjson
from aiohttp import web
from idlewatch.durations import DurationError, parse_duration_s, parse_timeout_s
from idlewatch.errors import InvalidValue
from idlewatch.models import AgentSpec, Kind, freeze
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
from .keys import SETTINGS

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


# ------------------------------------------------------------------ query parameters
#: the longest a request may ask to be held (``timeout``)
MAX_WAIT_S = 300.0


@contextlib.contextmanager
def refused_as(code: str, field: str) -> Iterator[None]:
    """A value the core refuses (:class:`InvalidValue`) as this route's input error: ``code``
    (``invalid_body`` or ``invalid_parameter``, as for a malformed one) naming ``field``."""
    try:
        yield
    except InvalidValue as exc:
        raise ApiError(400, code, exc.message.replace(exc.field, field, 1), field) from None


def only(request: web.Request, allowed: Collection[str]) -> None:
    """Refuse a query parameter the route does not take (never silently ignored)."""
    for key in request.query:
        if key not in allowed:
            raise ApiError(400, "unknown_parameter", f"unknown query parameter {key!r}", key)


def names(request: web.Request) -> list[str]:
    """``names`` repeated, or comma-separated, or both; empty parts are ignored (none
    left: as if no names were given)."""
    out: list[str] = []
    for value in request.query.getall("names", []):
        out.extend(p for part in value.split(",") if (p := part.strip()))
    return list(dict.fromkeys(out))


def group(request: web.Request) -> str | None:
    """``group``, given once and not empty."""
    groups = request.query.getall("group", [])
    if len(groups) > 1:
        raise ApiError(400, "invalid_parameter", "group can be given once", "group")
    if groups and not groups[0].strip():
        raise ApiError(400, "invalid_parameter", "group is empty", "group")
    return groups[0].strip() if groups else None


def duration(
    request: web.Request,
    key: str,
    *,
    maximum: float | None = None,
    default: float | None = None,
    allow_zero: bool = False,
) -> float | None:
    """A duration parameter (``90``, ``30s``, ``5m``, ``1h30m``): a 400 naming it when bad,
    zero (unless ``allow_zero``), or above ``maximum`` (a bound of the API's own: limits
    the settings set are the core's to check)."""
    values = request.query.getall(key, [])
    if not values:
        return default
    if len(values) > 1:
        raise ApiError(400, "invalid_parameter", f"{key} can be given once", key)
    text = values[0]
    try:
        if not DURATION.fullmatch(text):
            raise DurationError(text)
        seconds = parse_duration_s(text)
    except DurationError:
        raise ApiError(
            400,
            "invalid_parameter",
            f"{key} must be a duration like 90, '30s', '5m' or '1h30m', got {text!r}",
            key,
        ) from None
    too_low = seconds < 0 if allow_zero else seconds <= 0
    if too_low or (maximum is not None and seconds > maximum):
        low = "at least 0" if allow_zero else "more than 0"
        high = f" and at most {maximum:g}s" if maximum is not None else ""
        raise ApiError(400, "invalid_parameter", f"{key} must be {low}{high}, got {text!r}", key)
    return seconds


def wait_seconds(text: str) -> float:
    """``timeout`` of a start with ``wait``: seconds in (0, MAX_WAIT_S]."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_WAIT_S:
        raise ApiError(
            400,
            "invalid_parameter",
            f"timeout must be seconds in (0, {MAX_WAIT_S:g}], got {text!r}",
            "timeout",
        )
    return value
