"""MkDocs hook: the configuration page's tables of settings are generated from the one table
of settings in the code (``simvue_otel._internal.config.SETTINGS``), so they cannot drift."""

from __future__ import annotations

from typing import Any

from simvue_otel._internal.config import settings_markdown

MARKERS = {"<!-- settings:core -->": True, "<!-- settings:other -->": False}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for marker, core in MARKERS.items():
        markdown = markdown.replace(marker, settings_markdown(core))
    return markdown
