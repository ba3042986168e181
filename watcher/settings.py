"""Settings, read once at the edge: environment (``IDLEWATCH_*``), ``.env``, a TOML file.

Priority, highest first: arguments, environment, ``.env``, the TOML file named by
``IDLEWATCH_CONFIG``, defaults. A bad value raises :class:`SettingsError` naming the
setting, where the value came from and the value itself.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .durations import DurationError, parse_duration_s, parse_timeout_s
from .errors import SettingsError

logger = logging.getLogger(__name__)

ENV_PREFIX = "IDLEWATCH_"
CONFIG_ENV = "IDLEWATCH_CONFIG"
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


class Settings(BaseSettings):
    """Every setting of idlewatch; durations are seconds (accepting ``90``, ``"15m"``...)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )
    _toml_path: ClassVar[Path | None] = None

    docker_url: str = Field(default_factory=_default_docker_url, min_length=1)
    database_url: str = Field(default="sqlite+aiosqlite:///./data/idlewatch.db", min_length=1)
    label: str = Field(default="idlewatch.enable", min_length=1)
    idle_timeout: TimeoutS = 900.0
    sweep_interval: DurationS = 60.0
    dry_run: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    api_token: SecretStr | None = None
    max_replicas: int = Field(default=10, ge=1)
    stop_timeout: DurationS = 10.0
    reconnect_backoff_max: DurationS = 30.0
    allowed_images: Annotated[list[str], NoDecode, BeforeValidator(_csv)] = Field(
        default_factory=list
    )
    agent_network: str | None = None
    ws_queue_size: int = Field(default=1000, ge=1)
    ws_send_timeout: DurationS = 5.0
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    subscriber_queue_size: int = Field(default=10_000, ge=1)
    log_level: str = "INFO"

    @field_validator("sweep_interval", "reconnect_backoff_max")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
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

    @field_validator("api_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        return value

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


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once, raising :class:`SettingsError` with a precise message.

    ``config`` (else ``$IDLEWATCH_CONFIG``) names an optional TOML file of the same keys.
    ``overrides`` win over every other source (the CLI passes its flags here).
    """
    path_text = str(config) if config is not None else os.environ.get(CONFIG_ENV)
    toml_path = _check_toml(path_text, from_flag=config is not None) if path_text else None
    _warn_unknown_env()
    Settings._toml_path = toml_path
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise _explain(exc, overrides, toml_path) from None
    finally:
        Settings._toml_path = None


def _check_toml(path_text: str, *, from_flag: bool) -> Path:
    source = "the --config flag" if from_flag else f"environment variable {CONFIG_ENV}"
    path = Path(path_text)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SettingsError(
            "config", path_text, source, f"cannot read it: {exc.strerror}"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("config", path_text, source, f"not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(Settings.model_fields))
    if unknown:
        raise SettingsError(
            unknown[0], data[unknown[0]], f"file {path}", "unknown setting (check the spelling)"
        )
    return path


def _warn_unknown_env() -> None:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_ENV}
    for var in os.environ:
        if var.upper().startswith(ENV_PREFIX) and var.upper() not in known:
            logger.warning("ignoring unknown environment variable %s (not a setting)", var)


def _explain(exc: ValidationError, overrides: dict[str, Any], toml: Path | None) -> SettingsError:
    err = exc.errors()[0]
    name = str(err["loc"][0]) if err["loc"] else "settings"
    source, value = _locate(name, overrides, toml)
    if value is _MISSING:
        value = err.get("input")
    reason = str(err["msg"]).removeprefix("Value error, ")
    return SettingsError(name, value, source, reason)


_MISSING = object()


def _locate(name: str, overrides: dict[str, Any], toml: Path | None) -> tuple[str, object]:
    """Which source gave ``name`` its value, in priority order, and that raw value."""
    if name in overrides:
        return f"argument {name}", overrides[name]
    var = ENV_PREFIX + name.upper()
    for key, val in os.environ.items():
        if key.upper() == var:
            return f"environment variable {key}", val
    dotenv = _read_dotenv(Path(".env"))
    if var in dotenv:
        return f"file .env ({var})", dotenv[var]
    if toml is not None:
        data = tomllib.loads(toml.read_text())
        if name in data:
            return f"file {toml} (key {name})", data[name]
    return "the default", _MISSING


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, val = line.strip().removeprefix("export ").partition("=")
        if sep and not key.startswith("#"):
            out[key.strip().upper()] = val.strip().strip("'\"")
    return out
