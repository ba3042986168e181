"""Rewrite the settings table in docs/settings.md from the Settings model (between its
markers)."""

from pathlib import Path

from idlewatch.settings_load import settings_table

doc = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
text = doc.read_text()
start = text.index("-->\n", text.index("<!-- settings-table")) + len("-->\n")
end = text.index("<!-- /settings-table -->")
doc.write_text(text[:start] + settings_table() + text[end:])
