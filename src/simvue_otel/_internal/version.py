"""The package version, in one place (read by ``__init__``, the client's User-Agent and the CLI)."""

VERSION = "0.1.0"
