"""The CLI answers --help without importing what it does not need."""

from __future__ import annotations

import subprocess
import sys


def test_help_imports_only_what_help_needs() -> None:
    """`idlewatch --help` must answer fast: it may not import the engine client, the
    database layer, pydantic or aiohttp (over a second of imports; issue 11)."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from idlewatch.api.cli import main\n"
        "r = CliRunner().invoke(main, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = ('aiohttp', 'aiodocker', 'databases', 'sqlalchemy', 'pydantic', "
        "'pydantic_settings', 'orjson', 'idlewatch.core', 'idlewatch.settings')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", out
