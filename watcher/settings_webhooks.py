"""The settings of webhooks: the endpoints and how long a delivery is tried. A part of
:class:`~idlewatch.settings.Settings` (its base class), as settings_access.py is.

A webhook's url is the operator's configuration: a loopback or private address is allowed,
and no url is ever taken from a request. A bad one fails start-up naming the entry
(``webhooks[1].url``); a secret is never shown in an error.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from .agent_match import AgentMatch
from .durations import DurationError, parse_duration_s

#: the kinds of event a webhook can ask for (the timeline's, plus dead letters)
WEBHOOK_EVENTS = ("status", "idle_action", "skip", "wake", "eviction", "lifecycle", "dead_letter")
WebhookEvent = Literal[
    "status", "idle_action", "skip", "wake", "eviction", "lifecycle", "dead_letter"
]


def _duration(value: object) -> float:
    try:
        return parse_duration_s(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


class WebhookSpec(BaseModel):
    """One endpoint: ``{url, events?, agents?, groups?, secret?}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="Where deliveries are POSTed (http or https).")
    events: list[WebhookEvent] | None = Field(
        default=None, description="The kinds of event sent (every kind without)."
    )
    agents: list[str] | None = Field(default=None, description="Agent name globs.")
    groups: list[str] | None = Field(default=None, description="Agent groups.")
    secret: SecretStr | None = Field(
        default=None, description="Signs each body: X-Idlewatch-Signature: sha256=<hex>."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http:// or https:// URL with a host")
        return value.strip()

    @field_validator("agents", "groups")
    @classmethod
    def _entries(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not all(v.strip() for v in value):
            raise ValueError("an empty entry")
        return value

    def match(self) -> AgentMatch | None:
        """The agents it is about (None: every agent)."""
        if self.agents is None and self.groups is None:
            return None
        return AgentMatch.of(self.agents or (), self.groups or ())


class WebhookSettings(BaseSettings):
    """Webhook endpoints (see the module doc)."""

    webhooks: list[WebhookSpec] = Field(
        default_factory=list,
        description="Webhook endpoints, a JSON list of `{url, events?, agents?, groups?, "
        "secret?}`: signed JSON POSTs of status changes, idle actions, skips, wakes, "
        "evictions, lifecycle actions and dead letters, from a durable outbox. See "
        "docs/webhooks.md.",
        json_schema_extra={"default_text": "none"},
    )
    webhook_max_age: Annotated[float, BeforeValidator(_duration)] = Field(
        default=86400.0,
        gt=0,
        description="How long a delivery is retried (capped backoff) before it is marked failed.",
        json_schema_extra={"default_text": "`24h`"},
    )


__all__ = ["WEBHOOK_EVENTS", "WebhookEvent", "WebhookSettings", "WebhookSpec"]
