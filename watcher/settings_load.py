"""Where the settings come from, and what a bad one says: the sources in priority order,
the TOML file checked up front, a :class:`~idlewatch.errors.SettingsError` naming the
setting, its source and its value, and the reference table generated from the model."""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import SettingsError
from .settings import CONFIG_ENV, ENV_PREFIX, SECRETS_DIR, Settings

logger = logging.getLogger(__name__)


def load_settings(config: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once, raising :class:`SettingsError` with a precise message.

    ``config`` (else ``$IDLEWATCH_CONFIG``) names an optional TOML file of the same keys.
    ``overrides`` win over every other source (the CLI passes its flags here).
    """
    path_text = str(config) if config is not None else os.environ.get(CONFIG_ENV)
    toml_path = _check_toml(path_text, from_flag=config is not None) if path_text else None
    _warn_unknown_env()
    Settings._toml_path = toml_path
    secrets_dir = SECRETS_DIR if Path(SECRETS_DIR).is_dir() else None
    try:
        return Settings(_secrets_dir=secrets_dir, **overrides)  # type: ignore[call-arg]
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


#: settings whose values hold secrets: an error names the entry at fault, never the value
SECRET_SETTINGS = frozenset({"api_token", "wake_token", "read_token", "tokens", "webhooks"})


def _explain(exc: ValidationError, overrides: dict[str, Any], toml: Path | None) -> SettingsError:
    err = exc.errors()[0]
    reason = str(err["msg"]).removeprefix("Value error, ")
    loc = err["loc"]
    name = str(loc[0]) if loc else "settings"
    if not loc and ": " in reason:  # a check of two settings names the one at fault
        name, reason = reason.split(": ", 1)
    if len(loc) > 1:  # an entry of a list setting: say which (tokens[0].scopes[1])
        where = name + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
        reason = f"{where}: {reason}"
    source, value = _locate(name, overrides, toml)
    if value is _MISSING:
        value = err.get("input")
    if name in SECRET_SETTINGS:
        value = "<not shown: it holds secrets>"
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
    if name == "docker_url" and os.environ.get("DOCKER_HOST"):
        return "environment variable DOCKER_HOST", os.environ["DOCKER_HOST"]
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


def settings_table() -> str:
    """The README's settings table, generated from the model so the two cannot drift."""
    rows = ["| setting | environment variable | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        default = extra.get("default_text")
        if default is None:
            value = field.default
            text = str(value).lower() if isinstance(value, bool) else str(value)
            default = "none" if value is None else f"`{text}`"
        env = f"`{ENV_PREFIX}{name.upper()}`"
        rows.append(f"| `{name}` | {env} | {default} | {field.description or ''} |")
    return "\n".join(rows) + "\n"
