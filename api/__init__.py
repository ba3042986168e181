"""The HTTP API over the core Watcher (built in the next milestone; issue 3)."""
