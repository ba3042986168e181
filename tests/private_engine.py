"""The private engine harness lives in the package (``idlewatch demo`` uses it too)."""

from api.private_engine import (
    TEST_IMAGE,
    EngineSetupError,
    PrivateEngine,
    ensure_installed,
    free_port,
)

__all__ = ["TEST_IMAGE", "EngineSetupError", "PrivateEngine", "ensure_installed", "free_port"]
