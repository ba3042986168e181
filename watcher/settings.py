"""Settings, read once at the edge: environment (``IDLEWATCH_*``), ``.env``, a TOML file.

Priority, highest first: arguments, environment, ``.env``, the TOML file named by
``IDLEWATCH_CONFIG``, defaults. A bad value raises :class:`SettingsError` naming the
setting, where the value came from and the value itself.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .durations import DurationError, parse_duration_s, parse_timeout_s
from .settings_access import AccessSettings
from .settings_webhooks import WebhookSettings
from .tcp_wake import parse_networks
from .wake_ignore import DEFAULT_PATHS, DEFAULT_USER_AGENTS, compile_user_agents

logger = logging.getLogger(__name__)

ENV_PREFIX = "IDLEWATCH_"
CONFIG_ENV = "IDLEWATCH_CONFIG"
#: Docker and Swarm secrets: a file /run/secrets/idlewatch_api_token sets api_token
SECRETS_DIR = "/run/secrets"
DEFAULT_DOCKER_URL = "unix:///var/run/docker.sock"


def _duration(value: object) -> float:
    try:
        return parse_duration_s(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


def _timeout(value: object) -> float | None:
    try:
        return parse_timeout_s(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


def _csv(value: object) -> object:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            try:
                return json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not a JSON list: {exc}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


DurationS = Annotated[float, BeforeValidator(_duration)]
TimeoutS = Annotated[float | None, BeforeValidator(_timeout)]


def _default_docker_url() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_URL


class Settings(AccessSettings, WebhookSettings):
    """Every setting of idlewatch; durations are seconds (accepting ``90``, ``"15m"``...)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )
    _toml_path: ClassVar[Path | None] = None

    docker_url: str = Field(
        default_factory=_default_docker_url,
        min_length=1,
        description="Docker engine address (`unix://`, `tcp://`).",
        json_schema_extra={"default_text": "`$DOCKER_HOST`, else `unix:///var/run/docker.sock`"},
    )
    database_url: str = Field(
        default="sqlite+aiosqlite:///./data/idlewatch.db",
        min_length=1,
        description="SQLite, or `postgresql+asyncpg://user:pass@host/db` (the `postgres` extra).",
    )
    label: str = Field(
        default="idlewatch.enable",
        min_length=1,
        description="The management label: managed only when its value is `true`.",
    )
    idle_timeout: TimeoutS = Field(
        default=900.0,
        description="Default idle timeout; `never` or `0` disables idle stop.",
        json_schema_extra={"default_text": "`15m`"},
    )
    sweep_interval: DurationS = Field(
        default=60.0,
        description="The longest time between two idle sweeps (each also runs at the "
        "earliest agent deadline: see `sweep_min_interval`).",
        json_schema_extra={"default_text": "`60s`"},
    )
    sweep_min_interval: DurationS = Field(
        default=1.0,
        description="The least time between two idle sweeps. A sweep runs at the earliest "
        "deadline an agent has (at least every `sweep_interval`), so an idle agent is acted "
        "on within about this long of its timeout.",
        json_schema_extra={"default_text": "`1s`"},
    )
    dry_run: bool = Field(
        default=False,
        description="The sweep records and logs idle stops without acting.",
    )
    removed_retention: TimeoutS = Field(
        default=3600.0,
        description=(
            "How long an agent whose object is gone (status `removed`) stays listed before "
            "it is forgotten, checked at each sweep; `never` keeps them all."
        ),
        json_schema_extra={"default_text": "`1h`"},
    )
    host: str = Field(
        default="127.0.0.1",
        description="Where the HTTP API listens; a non-loopback host needs `api_token`.",
    )
    port: int = Field(default=8080, ge=1, le=65535, description="Port of the HTTP API.")
    max_replicas: int = Field(
        default=10,
        ge=1,
        description="Upper bound of any replica count idlewatch sets.",
    )
    stop_timeout: DurationS = Field(
        default=10.0,
        description="Grace period of a container stop before SIGKILL.",
        json_schema_extra={"default_text": "`10s`"},
    )
    reconnect_backoff_max: DurationS = Field(
        default=30.0,
        description="Cap of the backoff between events-stream reconnects.",
        json_schema_extra={"default_text": "`30s`"},
    )
    idle_action: Literal["stop", "pause"] = Field(
        default="stop",
        description="What happens to an idle container: `stop`, or `pause` (it keeps its "
        "memory and resumes in milliseconds); label `idlewatch.idle-action` per agent. "
        "Services are always scaled to 0.",
    )
    pause_stop_after: TimeoutS = Field(
        default=3600.0,
        description="A paused agent is stopped after being paused this long (label "
        "`idlewatch.stop-after`); `never` keeps it paused.",
        json_schema_extra={"default_text": "`1h`"},
    )
    session_max_hold: TimeoutS = Field(
        default=43200.0,
        description="An open exec session stops holding its agent in use after this long "
        "(a forgotten terminal), with a warning naming it; `never` disables it. Attaches "
        "have their own bound: `attach_max_hold`.",
        json_schema_extra={"default_text": "`12h`"},
    )
    attach_max_hold: TimeoutS = Field(
        default=3600.0,
        description="An attach (`docker attach`, `docker run -it`) holds its agent in use "
        "until the container's process ends, but at most this long after the last attach "
        "or terminal resize: the engine tells nobody when a client detaches. `never` "
        "keeps it until the process ends.",
        json_schema_extra={"default_text": "`1h`"},
    )
    busy_command_timeout: DurationS = Field(
        default=10.0,
        description="How long an agent's `idlewatch.busy-command` may run before an idle "
        "check gives up on it (and counts the agent as busy).",
        json_schema_extra={"default_text": "`10s`"},
    )
    max_keep_for: DurationS = Field(
        default=86400.0,
        description="The longest keep-alive a touch may ask for (`keep_for`).",
        json_schema_extra={"default_text": "`24h`"},
    )
    max_awake: int | None = Field(
        default=None,
        ge=1,
        description="At most this many managed agents running or paused: a start beyond it "
        "first stops the least recently used one that is not busy, not kept alive and not "
        "`never` (409 `capacity` when none can be); none by default.",
    )
    wake_timeout: DurationS = Field(
        default=30.0,
        description="How long a wake request (`/api/wake`, the Sablier blocking route) waits "
        "for its agents to run before answering 504 `not-ready` (`?timeout=` per request).",
        json_schema_extra={"default_text": "`30s`"},
    )
    wake_keep_for: DurationS = Field(
        default=300.0,
        description="Every wake request keeps its agents awake this long (`?keep_for=`, "
        "Sablier's `session_duration`, per request; at most `max_keep_for`).",
        json_schema_extra={"default_text": "`5m`"},
    )
    wake_ignore_user_agents: Annotated[list[str], NoDecode, BeforeValidator(_csv)] = Field(
        default_factory=lambda: list(DEFAULT_USER_AGENTS),
        description="Wake requests whose User-Agent matches one of these regular expressions "
        "(searched anywhere, case-insensitive) start nothing and are no use: crawlers and "
        "uptime probes. Comma-separated, or a JSON list (for a pattern with a comma); `[]` "
        "for none.",
        json_schema_extra={
            "default_text": "well-known crawlers and probes (`bot\\b`, `spider`, "
            "`crawler`, `Pingdom`, `kube-probe`, ...: docs/wake.md)"
        },
    )
    wake_ignore_paths: Annotated[list[str], NoDecode, BeforeValidator(_csv)] = Field(
        default_factory=lambda: list(DEFAULT_PATHS),
        description="Wake requests for these paths (globs, matched on the proxied request's "
        "`X-Forwarded-Uri` or `X-Original-URI` without its query) start nothing and are no "
        "use; an agent's `idlewatch.wake-ignore-paths` label adds its own. `[]` for none.",
        json_schema_extra={"default_text": "`/favicon.ico,/robots.txt`"},
    )
    tcp_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Where `serve` listens for the `idlewatch.tcp` label's ports (wake on a "
        "TCP connection).",
    )
    tcp_allow: Annotated[list[str], NoDecode, BeforeValidator(_csv)] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Client addresses (CIDRs) a `idlewatch.tcp` listener accepts; any other "
        "is closed at once (a TCP port has no token). Comma-separated or a JSON list.",
        json_schema_extra={"default_text": "loopback (`127.0.0.0/8,::1/128`)"},
    )
    group_label: str = Field(
        default="idlewatch.group",
        min_length=1,
        description="The label naming an agent's groups (comma-separated); Sablier's is "
        "`sablier.group`.",
    )
    hosts_label: str = Field(
        default="idlewatch.hosts",
        min_length=1,
        description="The label naming the host names (comma-separated) a wake request "
        "without `names` or `group` matches against its `X-Forwarded-Host`, else `Host`.",
    )
    resync_interval: TimeoutS = Field(
        default=300.0,
        description="How often the engine is listed again while the events stream is up, "
        "to correct drift that no event announced (each correction is logged); `never` "
        "disables it.",
        json_schema_extra={"default_text": "`5m`"},
    )
    write_pace: DurationS = Field(
        default=0.0,
        description="The least time between two database commits of the writer: a burst "
        "of changes within it shares one transaction (fewer commits, less CPU under heavy "
        "churn) at the cost of rows reaching the database up to this much later; `0` "
        "commits as soon as the previous commit is done. The API, the feed and the "
        "sweeper read memory and never wait for it.",
        json_schema_extra={"default_text": "`0`"},
    )
    allowed_images: Annotated[list[str], NoDecode, BeforeValidator(_csv)] = Field(
        default_factory=list,
        description="Glob patterns of images `POST /api/agents` may deploy; empty disables "
        "registration. Comma-separated or a JSON list in the environment.",
        json_schema_extra={"default_text": "empty"},
    )
    agent_network: str | None = Field(
        default=None,
        description="Network deployed agents join; unset, they get network mode `none`.",
    )
    ws_queue_size: int = Field(
        default=1000,
        ge=1,
        description="Changes a websocket client may fall behind before it is dropped.",
    )
    ws_max_buffer_bytes: int = Field(
        default=256 * 1024,
        ge=16 * 1024,
        description="A websocket client with more unread bytes than this is dropped.",
    )
    ws_send_timeout: DurationS = Field(
        default=5.0,
        description="A new websocket client whose snapshot takes longer to send is dropped.",
        json_schema_extra={"default_text": "`5s`"},
    )
    events_replay: int = Field(
        default=1000,
        ge=0,
        description="Changes kept for event-stream clients that reconnect with "
        "`Last-Event-ID` (`GET /api/events`); one who missed more gets a fresh snapshot.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Request bodies above this get 413.",
    )
    max_connections: int = Field(
        default=2048,
        ge=1,
        description="Open HTTP connections (websockets included) `serve` accepts; one more gets "
        "503 and is closed at once. Also capped by the open-file limit.",
    )
    ws_max_clients: int = Field(
        default=1024,
        ge=1,
        description="Websocket clients at once; one more gets a 503 JSON error instead of "
        "the upgrade.",
    )
    request_timeout: DurationS = Field(
        default=30.0,
        description="A connection must send complete request headers within this long of "
        "opening (or of its previous answer), and a body within this long of the route "
        "reading it; else it is closed (slow clients, slow-loris).",
        json_schema_extra={"default_text": "`30s`"},
    )
    subscriber_queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Changes a `changes()` consumer may fall behind before it is dropped.",
    )
    leader_lease: DurationS = Field(
        default=15.0,
        ge=1.0,
        description="Replicas sharing one database elect a leader (the one that sweeps and "
        "reconciles); when it dies, another takes over within this long.",
        json_schema_extra={"default_text": "`15s`"},
    )
    replica_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
        min_length=1,
        description="This replica's name in the leader lease, `/readyz` and `/metrics`.",
        json_schema_extra={"default_text": "`<hostname>-<pid>`"},
    )
    node_id: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="`idlewatch node`: this node's name in its activity reports "
        "(source `node:<node_id>`); unique per Swarm node.",
        json_schema_extra={"default_text": "the host name"},
    )
    report_interval: DurationS = Field(
        default=1.0,
        gt=0,
        description="`idlewatch node`: activity reports are written at most this often.",
        json_schema_extra={"default_text": "`1s`"},
    )
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")

    @field_validator(
        "sweep_interval",
        "sweep_min_interval",
        "reconnect_backoff_max",
        "ws_send_timeout",
        "request_timeout",
        "busy_command_timeout",
        "max_keep_for",
        "wake_timeout",
        "wake_keep_for",
    )
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("wake_ignore_user_agents")
    @classmethod
    def _user_agent_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                compile_user_agents([pattern])
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return value

    @field_validator("tcp_allow")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        parse_networks(value)  # ValueError names the bad one
        return value

    @field_validator("wake_ignore_paths")
    @classmethod
    def _path_globs(cls, value: list[str]) -> list[str]:
        for glob in value:
            if not glob.startswith(("/", "*")):
                raise ValueError(f"{glob!r}: a path glob starts with / (or *)")
        return value

    @field_validator("database_url")
    @classmethod
    def _db_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "sqlite://", "postgresql")):
            raise ValueError(
                "expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB"
            )
        return value

    @field_validator("docker_url")
    @classmethod
    def _docker_scheme(cls, value: str) -> str:
        if not value.startswith(("unix://", "tcp://", "http://", "https://", "ssh://")):
            raise ValueError("expected unix:///path/to/docker.sock or tcp://host:port")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in logging.getLevelNamesMapping():
            raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @model_validator(mode="after")
    def _wake_keep_for_within_max_keep_for(self) -> Settings:
        """A wake_keep_for above max_keep_for is an error when it was set; the default
        (5m) shrinks to a smaller max_keep_for instead of failing a config that never
        mentioned it."""
        if self.wake_keep_for > self.max_keep_for:
            if "wake_keep_for" in self.model_fields_set:
                raise ValueError(
                    f"wake_keep_for: must be at most max_keep_for ({self.max_keep_for:g}s)"
                )
            object.__setattr__(self, "wake_keep_for", self.max_keep_for)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then environment, then ``.env``, then the TOML file."""
        sources = [init_settings, env_settings, dotenv_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return (*sources, file_secret_settings)
