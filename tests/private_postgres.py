"""The private PostgreSQL harness lives in the package, beside the private engine."""

from api.private_postgres import PostgresSetupError, PrivatePostgres, ensure_installed

#: the stores a ``both_backends`` test runs on (tests/conftest.py)
BACKENDS = ("sqlite", "postgres")

__all__ = ["BACKENDS", "PostgresSetupError", "PrivatePostgres", "ensure_installed"]
