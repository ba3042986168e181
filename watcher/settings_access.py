"""The settings of who may call the API: the three fixed tokens, scoped ``tokens``, and
``wake_open``. A part of :class:`~idlewatch.settings.Settings` (its base class), kept
apart so that the access rules read in one place.

Every token is its own set of scopes; two equal ones would be one token with the scopes of
whichever is compared last, so tokens must differ. Token values never appear in an error
(an error names the setting and the entry, ``tokens[2].scopes``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from .agent_match import AgentMatch

#: every scope, in the order they are shown
SCOPES = ("read", "touch", "wake", "control", "deploy")
Scope = Literal["read", "touch", "wake", "control", "deploy"]


class TokenSpec(BaseModel):
    """One scoped token: ``{token, scopes, agents?}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: SecretStr = Field(description="The bearer token (compared in constant time).")
    scopes: list[Scope] = Field(min_length=1, description="What it may do (see SCOPES).")
    agents: list[str] | None = Field(
        default=None,
        description="Name globs or `group:NAME` entries it is limited to; every agent without.",
    )

    @field_validator("token")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("an empty token")
        return value

    @field_validator("agents")
    @classmethod
    def _agents(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("an empty list would allow no agent; leave agents out for all")
            AgentMatch.parse(value, "agents")
        return value

    def match(self) -> AgentMatch | None:
        """The agents it is limited to (None: every agent)."""
        return None if self.agents is None else AgentMatch.parse(self.agents, "agents")


class AccessSettings(BaseSettings):
    """Tokens and their scopes (see the module doc)."""

    api_token: SecretStr | None = Field(
        default=None,
        description="With it, every `/api/...` route and the websocket need "
        "`Authorization: Bearer <token>`. It has every scope.",
    )
    wake_token: SecretStr | None = Field(
        default=None,
        description="A token that can only wake (the wake and Sablier routes), for proxy "
        "configs; they accept `api_token` too.",
    )
    read_token: SecretStr | None = Field(
        default=None,
        description="A token that can only read: every GET route, the websocket and the "
        "event stream (a status page, a dashboard without controls). Needs `api_token` or "
        "`tokens`; any other call with it is a 403 naming the scope it needs.",
    )
    tokens: list[TokenSpec] = Field(
        default_factory=list,
        description="Scoped tokens, a JSON list of `{token, scopes, agents?}`: `scopes` from "
        "`read`, `touch`, `wake`, `control`, `deploy`; `agents` name globs or `group:NAME` "
        "entries it is limited to (others answer 404 to it). See docs/api.md.",
        json_schema_extra={"default_text": "none"},
    )
    wake_open: bool = Field(
        default=False,
        description="The wake and Sablier routes (and only them) need no token, for proxy "
        "plugins that cannot send a header; `serve` warns when the host is not loopback.",
    )

    @field_validator("api_token", "wake_token", "read_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        return value

    @model_validator(mode="after")
    def _tokens_differ(self) -> AccessSettings:
        given = [
            (name, t.get_secret_value())
            for name in ("api_token", "wake_token", "read_token")
            if (t := getattr(self, name)) is not None
        ] + [(f"tokens[{i}].token", t.token.get_secret_value()) for i, t in enumerate(self.tokens)]
        for i, (name, value) in enumerate(given):
            for other, other_value in given[i + 1 :]:
                if value == other_value:
                    setting = other.split("[")[0]
                    entry = "" if other == setting else f"{other} "
                    raise ValueError(
                        f"{setting}: {entry}must differ from {name} (each token has its own scopes)"
                    )
        return self

    @model_validator(mode="after")
    def _read_token_needs_another(self) -> AccessSettings:
        if self.read_token is not None and self.api_token is None and not self.tokens:
            raise ValueError(
                "read_token: set api_token too, or tokens (without either every route is "
                "open, and a token that may only read would limit nothing)"
            )
        return self

    def wake_guarded(self) -> bool:
        """Whether the wake routes ask for a token (``wake_open`` off and some token may
        wake)."""
        return not self.wake_open and (
            self.api_token is not None
            or self.wake_token is not None
            or any("wake" in t.scopes for t in self.tokens)
        )

    def guarded(self) -> bool:
        """Whether the API's routes ask for a token: some token has a scope other than
        ``wake`` (a wake token alone guards only the wake routes)."""
        return (
            self.api_token is not None
            or self.read_token is not None
            or any(set(t.scopes) - {"wake"} for t in self.tokens)
        )


__all__ = ["SCOPES", "AccessSettings", "Scope", "TokenSpec"]
