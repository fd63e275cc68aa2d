"""A Resource's system and environment facts as Simvue holds them: the run's ``system`` field
and its ``git``, ``python`` and ``shell`` metadata, shaped as the official client shapes them.

The attributes are OTel's where OTel names them (``host.name``, ``os.type``,
``process.runtime.version``, ``vcs.*``...) and simvue-otel's otherwise (conventions §3); any
producer that sets them — a ``Run``, an OTel-only app whose SDK runs the host detector, a
collector's resource processor — fills the same Simvue fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .. import conventions as cv

__all__ = ["CONSUMED", "run_facts"]

CONSUMED = frozenset({cv.PYTHON_ENVIRONMENT, cv.SHELL_VARIABLES})
"""Attributes whose whole content becomes metadata here (not copied again as ``resource.*``)."""


def _text(resource: Mapping[str, Any], key: str) -> str | None:
    value = resource.get(key)
    return value if isinstance(value, str) else None


def _json_object(resource: Mapping[str, Any], key: str) -> dict[str, Any]:
    text = resource.get(key)
    if not isinstance(text, str):
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def _system(resource: Mapping[str, Any]) -> dict[str, Any] | None:
    """Simvue's ``system`` field (only what the Resource says), or None when it says nothing."""
    system: dict[str, Any] = {}
    for field, key in (
        ("cwd", cv.PROCESS_WORKING_DIRECTORY),
        ("hostname", cv.HOST_NAME),
        ("pythonversion", cv.PROCESS_RUNTIME_VERSION),
    ):
        value = _text(resource, key)
        if value is not None:
            system[field] = value
    os_type = _text(resource, cv.OS_TYPE)
    platform = {
        "system": cv.OS_SYSTEM_NAMES.get(os_type, os_type) if os_type is not None else None,
        "release": _text(resource, cv.OS_VERSION),
        "version": _text(resource, cv.OS_DESCRIPTION),
    }
    cpu = {"arch": _text(resource, cv.HOST_ARCH), "processor": _text(resource, cv.HOST_CPU_MODEL)}
    gpu = {"name": _text(resource, cv.GPU_NAME), "driver": _text(resource, cv.GPU_DRIVER)}
    for field, part in (("platform", platform), ("cpu", cpu), ("gpu", gpu)):
        known = {k: v for k, v in part.items() if v is not None}
        if known:
            system[field] = known
    return system or None


def _git(resource: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata ``git.*`` as the official client records it, from ``vcs.*`` and
    ``simvue.git.*``: ``ref`` is the tag at the commit, else the commit's hash."""
    revision = _text(resource, cv.VCS_REVISION)
    if revision is None:
        return {}
    tag = _text(resource, cv.VCS_REF_NAME) if resource.get(cv.VCS_REF_TYPE) == "tag" else None
    git: dict[str, Any] = {"ref": tag or revision}
    for field, key in (
        ("url", cv.VCS_URL),
        ("msg", cv.GIT_MESSAGE),
        ("time_stamp", cv.GIT_TIME),
        ("blame", cv.GIT_BLAME),
    ):
        value = _text(resource, key)
        if value is not None:
            git[field] = value
    dirty = resource.get(cv.GIT_DIRTY)
    if isinstance(dirty, bool):
        git["dirty"] = dirty
    authors = resource.get(cv.GIT_AUTHORS)
    if isinstance(authors, list | tuple):
        git["authors"] = [str(a) for a in authors]
    return {f"git.{k}": v for k, v in git.items()}


def run_facts(resource: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``(system, metadata)`` of the run a Resource describes: the ``system`` field (None when
    the Resource says nothing of it) and flat metadata (dotted keys) for git, the Python
    environment and recorded shell variables."""
    metadata = _git(resource)
    for name, version in _json_object(resource, cv.PYTHON_ENVIRONMENT).items():
        metadata[f"python.environment.{name}"] = version
    for field, key in (("name", cv.PYTHON_PROJECT_NAME), ("version", cv.PYTHON_PROJECT_VERSION)):
        value = _text(resource, key)
        if value is not None:
            metadata[f"python.project.{field}"] = value
    for name, value in _json_object(resource, cv.SHELL_VARIABLES).items():
        metadata[f"shell.{name}"] = value
    return _system(resource), metadata
