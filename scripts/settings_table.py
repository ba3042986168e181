"""Rewrite the settings table in README.md from the Settings model (between its markers)."""

from pathlib import Path

from idlewatch.settings_load import settings_table

readme = Path(__file__).resolve().parent.parent / "README.md"
text = readme.read_text()
start = text.index("-->\n", text.index("<!-- settings-table")) + len("-->\n")
end = text.index("<!-- /settings-table -->")
readme.write_text(text[:start] + settings_table() + text[end:])
