"""Settings sources, precedence and the messages for bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from idlewatch import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No IDLEWATCH_* or DOCKER_HOST from the outside; run in an empty directory."""
    for var in list(os.environ):
        if var.startswith("IDLEWATCH_") or var == "DOCKER_HOST":
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = load_settings()
    assert s.docker_url == "unix:///var/run/docker.sock"
    assert s.database_url == "sqlite+aiosqlite:///./data/idlewatch.db"
    assert s.label == "idlewatch.enable"
    assert (s.idle_timeout, s.sweep_interval, s.dry_run) == (900, 60, False)
    assert (s.host, s.port, s.api_token, s.max_replicas) == ("127.0.0.1", 8080, None, 10)


def test_docker_host_is_the_default_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2375")
    assert load_settings().docker_url == "tcp://10.0.0.1:2375"
    monkeypatch.setenv("IDLEWATCH_DOCKER_URL", "unix:///x.sock")
    assert load_settings().docker_url == "unix:///x.sock"


def test_precedence_argument_env_dotenv_toml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "iw.toml"
    toml.write_text('idle_timeout = "1h"\nsweep_interval = 5\nport = 9000\nlabel = "from.toml"\n')
    (tmp_path / ".env").write_text("IDLEWATCH_SWEEP_INTERVAL=7s\nIDLEWATCH_PORT=9001\nOTHER=1\n")
    monkeypatch.setenv("IDLEWATCH_CONFIG", str(toml))
    monkeypatch.setenv("IDLEWATCH_PORT", "9002")
    s = load_settings(label="from.arg")
    assert s.idle_timeout == 3600  # toml
    assert s.sweep_interval == 7  # .env beats toml
    assert s.port == 9002  # env beats .env
    assert s.label == "from.arg"  # arguments beat everything


@pytest.mark.parametrize(
    ("var", "value", "setting"),
    [
        ("IDLEWATCH_IDLE_TIMEOUT", "soon", "idle_timeout"),
        ("IDLEWATCH_SWEEP_INTERVAL", "0", "sweep_interval"),
        ("IDLEWATCH_PORT", "http", "port"),
        ("IDLEWATCH_MAX_REPLICAS", "0", "max_replicas"),
        ("IDLEWATCH_DRY_RUN", "perhaps", "dry_run"),
        ("IDLEWATCH_DATABASE_URL", "mysql://x", "database_url"),
        ("IDLEWATCH_DOCKER_URL", "/var/run/docker.sock", "docker_url"),
    ],
)
def test_bad_env_value_names_setting_source_and_value(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, setting: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    msg = str(info.value)
    assert setting in msg and f"environment variable {var}" in msg and repr(value) in msg


def test_bad_value_in_toml_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = tmp_path / "iw.toml"
    toml.write_text('idle_timeout = "forever"\n')
    with pytest.raises(SettingsError, match=r"idle_timeout='forever' \(from file .*iw.toml"):
        load_settings(toml)
    (tmp_path / ".env").write_text("IDLEWATCH_PORT=70000\n")
    with pytest.raises(SettingsError, match=r"port='70000' \(from file .env"):
        load_settings()


def test_unknown_toml_key_and_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "iw.toml"
    toml.write_text("idle_timout = 5\n")
    with pytest.raises(SettingsError, match=r"idle_timout.*unknown setting"):
        load_settings(toml)
    monkeypatch.setenv("IDLEWATCH_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(SettingsError, match=r"environment variable IDLEWATCH_CONFIG.*cannot read"):
        load_settings()


def _serve(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `idlewatch serve` with only these IDLEWATCH_* variables; it must refuse to start."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("IDLEWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "idlewatch.api.cli", "serve"],
        env={**full, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_bad_settings_with_one_line(tmp_path: Path) -> None:
    res = _serve(tmp_path, IDLEWATCH_IDLE_TIMEOUT="abc")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "idlewatch: invalid setting idle_timeout='abc' (from environment variable "
        "IDLEWATCH_IDLE_TIMEOUT): expected a duration like 90, '90s', '15m' or '1h', got 'abc'"
    ]


def test_the_example_config_file_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "idlewatch.toml"
    s = load_settings(example)
    assert s.idle_timeout == 900 and s.sweep_interval == 60 and s.stop_timeout == 10


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    res = _serve(tmp_path, IDLEWATCH_HOST="0.0.0.0")
    assert res.returncode == 2
    assert "refusing to serve the API on 0.0.0.0 without a token" in res.stderr


def test_the_settings_reference_matches_the_model() -> None:
    from idlewatch.settings_load import settings_table

    readme = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    start = readme.index("-->\n", readme.index("<!-- settings-table")) + len("-->\n")
    end = readme.index("<!-- /settings-table -->")
    assert readme[start:end] == settings_table(), (
        "docs/settings.md's table is stale: regenerate it with "
        ".venv/bin/python scripts/settings_table.py"
    )


def test_a_bad_docker_host_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "/var/run/docker.sock")
    with pytest.raises(SettingsError, match="from environment variable DOCKER_HOST"):
        load_settings()


def test_ws_send_timeout_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDLEWATCH_WS_SEND_TIMEOUT", "0")
    with pytest.raises(SettingsError, match="ws_send_timeout"):
        load_settings()


def test_wake_keep_for_follows_a_smaller_max_keep_for_unless_set() -> None:
    assert load_settings(max_keep_for="60").wake_keep_for == 60
    assert load_settings().wake_keep_for == 300
    with pytest.raises(SettingsError, match=r"wake_keep_for='2m'.*at most max_keep_for"):
        load_settings(max_keep_for="60", wake_keep_for="2m")


def test_write_pace_is_a_duration_named_when_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDLEWATCH_WRITE_PACE", "200ms")
    assert load_settings().write_pace == pytest.approx(0.2)
    monkeypatch.setenv("IDLEWATCH_WRITE_PACE", "soon")
    with pytest.raises(SettingsError, match="write_pace") as bad:
        load_settings()
    assert "soon" in str(bad.value)
