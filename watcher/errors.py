"""The one error root of idlewatch and its structured subclasses."""

from __future__ import annotations


class WatcherError(Exception):
    """Root of every error idlewatch raises on purpose; ``code`` is stable, ``message`` readable."""

    code = "watcher_error"

    def __init__(self, message: str, *, agent: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.agent = agent


class SettingsError(WatcherError):
    """A setting has a bad value; names the setting, where it came from and the value."""

    code = "bad_setting"

    def __init__(self, setting: str, value: object, source: str, reason: str) -> None:
        super().__init__(f"invalid setting {setting}={value!r} (from {source}): {reason}")
        self.setting = setting
        self.value = value
        self.source = source
        self.reason = reason


class AgentNotFound(WatcherError):
    """No managed agent of that name is tracked (unlabelled things are never found)."""

    code = "not_found"


class InvalidOperation(WatcherError):
    """The operation does not apply to this agent (e.g. scaling a container above 1)."""

    code = "invalid_operation"


class InvalidValue(InvalidOperation):
    """A value beyond a limit the settings set (``max_replicas``, ``max_keep_for``); names
    the field (the API answers 400 with it)."""

    code = "invalid_value"

    def __init__(
        self, message: str, *, field: str, code: str | None = None, agent: str | None = None
    ) -> None:
        super().__init__(message, agent=agent)
        self.field = field
        if code is not None:
            self.code = code


class EngineUnavailable(WatcherError):
    """The Docker engine could not be reached."""

    code = "engine_unavailable"


class EngineError(WatcherError):
    """The Docker engine answered with an error."""

    code = "engine_error"

    def __init__(self, message: str, *, status: int = 500, agent: str | None = None) -> None:
        super().__init__(message, agent=agent)
        self.status = status


class StoreError(WatcherError):
    """The database could not be reached, or refused a read or a write."""

    code = "store_error"


class SubscriberLagged(WatcherError):
    """A ``changes()`` consumer fell so far behind that its queue overflowed; it was dropped."""

    code = "subscriber_lagged"


class Forbidden(WatcherError):
    """The request is understood but not allowed by the settings (e.g. an image not allowed)."""

    code = "forbidden"

    def __init__(self, message: str, *, code: str = "forbidden", agent: str | None = None) -> None:
        super().__init__(message, agent=agent)
        self.code = code


class Conflict(WatcherError):
    """The request conflicts with the current state (e.g. a name taken by something else)."""

    code = "conflict"


class CapacityExceeded(Conflict):
    """A start would wake more agents than ``max_awake`` and none could be put to sleep."""

    code = "capacity"
