"""A Resource's system and environment facts as Simvue holds them: the run's ``system`` field
and its ``git``, ``python`` and ``shell`` metadata, shaped as the official client shapes them;
and resource metrics under OTel's names (``process.cpu.utilization``, ``hw.gpu.*``...) as
Simvue's ``resources/*`` metrics, in Simvue's units.

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

__all__ = ["CONSUMED", "RESOURCE_METRICS", "resource_metric", "run_facts"]

CONSUMED = frozenset({cv.PYTHON_ENVIRONMENT, cv.SHELL_VARIABLES})
"""Attributes whose whole content becomes metadata here (not copied again as ``resource.*``)."""


def _text(resource: Mapping[str, Any], key: str) -> str | None:
    value = resource.get(key)
    return value if isinstance(value, str) else None


def _texts(resource: Mapping[str, Any], **fields: str) -> dict[str, Any]:
    """``{field: the text of attribute key}`` for each ``field=key`` the Resource holds."""
    found = {field: _text(resource, key) for field, key in fields.items()}
    return {field: value for field, value in found.items() if value is not None}


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
    system = _texts(
        resource,
        cwd=cv.PROCESS_WORKING_DIRECTORY,
        hostname=cv.HOST_NAME,
        pythonversion=cv.PROCESS_RUNTIME_VERSION,
    )
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
    git.update(
        _texts(
            resource, url=cv.VCS_URL, msg=cv.GIT_MESSAGE, time_stamp=cv.GIT_TIME, blame=cv.GIT_BLAME
        )
    )
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


RESOURCE_METRICS = frozenset(
    {
        cv.PROCESS_CPU_UTILIZATION,
        cv.PROCESS_MEMORY_USAGE,
        cv.HW_GPU_UTILIZATION,
        cv.HW_GPU_MEMORY_UTILIZATION,
    }
)
"""OTel metric names that may become Simvue resource metrics (a quick test before the rest)."""

# Attributes that describe a GPU without splitting its series (anything else, such as a
# hw.gpu.task other than "general", keeps the metric under its OTel name).
_GPU_ATTRIBUTES = frozenset(
    {cv.HW_ID, cv.HW_TYPE, cv.HW_GPU_TASK, "hw.name", "hw.model", "hw.vendor",
     "hw.driver_version", "hw.serial_number", "gpu.index"}
)  # fmt: skip
_MIB = float(2**20)


def resource_metric(
    name: str, attributes: Mapping[str, Any], value: float, resource: Mapping[str, Any]
) -> tuple[str, float] | None:
    """``(Simvue name, value)`` of one point of a resource metric under its OTel name, or
    None when it is not one Simvue knows (it then keeps its OTel name, as any instrument).

    * ``process.cpu.utilization`` (no attributes) → ``resources/cpu.usage.percentage`` =
      value * 100 * ``simvue.system.cpu.count`` (Simvue counts 100 per core); needs the count;
    * ``process.memory.usage`` (no attributes, bytes) → ``resources/cpu.usage.memory`` (MiB);
    * ``hw.gpu.utilization`` and ``hw.gpu.memory.utilization`` of the GPU ``hw.id`` (or
      ``gpu.index``) → ``resources/gpu.utilisation.percent.<id>`` and ``.memory.<id>``, * 100.
    """
    if name == cv.PROCESS_CPU_UTILIZATION:
        cpus = resource.get(cv.CPU_COUNT)
        if attributes or isinstance(cpus, bool) or not isinstance(cpus, int) or cpus <= 0:
            return None
        return cv.RESOURCE_CPU_PERCENT, value * 100.0 * cpus
    if name == cv.PROCESS_MEMORY_USAGE:
        return None if attributes else (cv.RESOURCE_MEMORY_MB, value / _MIB)
    if name in (cv.HW_GPU_UTILIZATION, cv.HW_GPU_MEMORY_UTILIZATION):
        if not attributes.keys() <= _GPU_ATTRIBUTES or attributes.get(cv.HW_GPU_TASK) not in (
            None,
            "general",
        ):
            return None
        gpu = attributes.get("gpu.index", attributes.get(cv.HW_ID))
        if isinstance(gpu, bool) or not isinstance(gpu, int | str) or gpu == "":
            return None
        template = (
            cv.RESOURCE_GPU_PERCENT if name == cv.HW_GPU_UTILIZATION else cv.RESOURCE_GPU_MEMORY
        )
        return template.format(index=gpu), value * 100.0
    return None
