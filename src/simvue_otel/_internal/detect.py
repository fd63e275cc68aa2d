"""What a run's process knows about itself, as OpenTelemetry Resource attributes.

The official Simvue client records, at init, the run's ``system`` (working directory, host,
Python version, platform, CPU, GPU) and metadata ``git``, ``python`` (the installed packages)
and ``shell`` (environment variables the user names). simvue-otel gathers the same facts as
Resource attributes, so they travel with every signal, reach any OTel backend, and are turned
into Simvue's fields by the one mapping (:mod:`.mapping.system`) whichever way they arrive.

OTel's own names are used where the semantic conventions have them: the SDK's ``host``,
``os`` and ``process`` resource detectors, ``process.working_directory``, ``os.description``,
``host.cpu.model.name`` and ``vcs.*`` for git. What OTel has no name for is under
``simvue.*`` (:mod:`.conventions`), the large parts as one JSON attribute each, so a Resource
stays well within the SDK's attribute limits.

Cheap by design (measured in ``bench/bench_detect.py``): no ``pip freeze`` (the installed
distributions are read with :mod:`importlib.metadata`), the git commands run side by side,
each bounded by a timeout, and nothing here raises: a fact that cannot be read is left out.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import (
    OsResourceDetector,
    ProcessResourceDetector,
    Resource,
    ResourceDetector,
    get_aggregated_resources,
)

from . import conventions as cv
from .config import child_environment, environment_matching, recorded_facts

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["detect"]

_LOG = logging.getLogger("simvue_otel.detect")

_GIT_TIMEOUT_S = 2.0
_MAX_AUTHOR_COMMITS = 10_000
"""Authors are gathered from at most this many recent commits (of all branches): enough for
any project's list, bounded for huge repositories."""
_NOT_AUTHORS = ("noreply", "[bot]")


def detect(
    cwd: Path | None = None,
    *,
    shell_vars: Iterable[str] = (),
    facts: Mapping[str, bool] | None = None,
) -> dict[str, Any]:
    """Resource attributes describing this process, its host, its git checkout and Python
    environment; ``shell_vars`` are glob patterns of environment variables to record.
    ``facts`` switches ``system``, ``git`` and ``environment`` off as the official client's
    ``SIMVUE_DISABLE_*_METRICS`` variables do (:func:`.config.recorded_facts`, the default)."""
    where = Path(cwd) if cwd is not None else Path.cwd()
    wanted = recorded_facts() if facts is None else facts
    attributes: dict[str, Any] = {}
    if wanted.get("system", True):
        attributes.update(_sdk_detected().attributes)
        attributes[cv.PROCESS_WORKING_DIRECTORY] = str(where)
        attributes[cv.OS_DESCRIPTION] = platform.version()
        attributes[cv.HOST_CPU_MODEL] = _cpu_model()
        attributes.update(_gpu())
    if wanted.get("git", True):
        attributes.update(_git(where))
    if wanted.get("environment", True):
        attributes.update(_python(where))
    patterns = [p for p in shell_vars if isinstance(p, str) and p]
    if patterns:
        chosen = environment_matching(patterns)
        attributes[cv.SHELL_VARIABLES] = json.dumps(chosen, sort_keys=True)
    return attributes


def _sdk_detected() -> Resource:
    """The SDK's host, os and process detectors (the host one through its entry point, the way
    ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=host`` loads it)."""
    detectors: list[ResourceDetector] = [OsResourceDetector(), ProcessResourceDetector()]
    with contextlib.suppress(Exception):
        (entry,) = _metadata.entry_points(group="opentelemetry_resource_detector", name="host")
        detectors.append(entry.load()())
    return get_aggregated_resources(detectors, timeout=5)


def _cpu_model() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``; elsewhere what ``platform`` says)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def _gpu() -> dict[str, str]:
    """The first GPU's name and driver, through NVML when ``pynvml`` is installed (empty
    strings otherwise, as the official client records a machine without one)."""
    found = {cv.GPU_NAME: "", cv.GPU_DRIVER: ""}
    from .resources import _load_nvml  # local: NVML is only tried here and by the monitor

    loaded = _load_nvml()
    if loaded is None:
        return found
    nvml = loaded[0]
    try:
        name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(0))
        driver = nvml.nvmlSystemGetDriverVersion()
        found[cv.GPU_NAME] = name.decode() if isinstance(name, bytes) else str(name)
        found[cv.GPU_DRIVER] = driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:
        _LOG.debug("NVML could not name the GPU", exc_info=True)
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return found


def _git(where: Path) -> dict[str, Any]:
    """The checkout ``where`` is in: commit, branch or tag, remote, message, time, authors and
    whether it has uncommitted changes. Empty outside a git checkout or without ``git``."""
    commands = {
        "head": ["log", "-1", "--format=%H%x00%cI%x00%ce%x00%B"],
        "dirty": ["status", "--porcelain", "--untracked-files=no"],
        "url": ["remote", "get-url", "origin"],
        "tags": ["tag", "--points-at", "HEAD"],
        "branch": ["rev-parse", "--abbrev-ref", "HEAD"],
        "authors": ["log", "--all", f"-n{_MAX_AUTHOR_COMMITS}", "--format=%ae%x00%an"],
        "email": ["config", "user.email"],
    }
    env = child_environment(GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    running: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, args in commands.items():
            running[name] = subprocess.Popen(
                ["git", *args],
                cwd=where,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
    except OSError:  # no git executable, or the folder is gone
        for proc in running.values():
            proc.kill()
            proc.wait()
        return {}
    out: dict[str, str | None] = {}
    for name, proc in running.items():
        try:
            stdout, _ = proc.communicate(timeout=_GIT_TIMEOUT_S)
            out[name] = stdout.decode("utf-8", "replace") if proc.returncode == 0 else None
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[name] = None
    head = (out.get("head") or "").split("\x00", 3)
    if len(head) != 4 or not head[0]:
        return {}
    revision, when, committer, message = head
    dirty = bool((out.get("dirty") or "").strip())
    tags = (out.get("tags") or "").split()
    branch = (out.get("branch") or "").strip()
    attributes: dict[str, Any] = {
        cv.VCS_REVISION: revision,
        cv.GIT_MESSAGE: message.strip(),
        cv.GIT_DIRTY: dirty,
        cv.GIT_BLAME: ((out.get("email") or "").strip() or "unknown") if dirty else committer,
    }
    if tags:
        attributes[cv.VCS_REF_NAME], attributes[cv.VCS_REF_TYPE] = tags[0], "tag"
    elif branch and branch != "HEAD":
        attributes[cv.VCS_REF_NAME], attributes[cv.VCS_REF_TYPE] = branch, "branch"
    url = (out.get("url") or "").strip()
    if url:
        attributes[cv.VCS_URL] = _without_credentials(url)
    with contextlib.suppress(ValueError):
        stamp = _dt.datetime.fromisoformat(when.strip()).astimezone(_dt.timezone.utc)
        attributes[cv.GIT_TIME] = stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")
    authors = set()
    for line in (out.get("authors") or "").splitlines():
        email, _, name = line.partition("\x00")
        if email and not any(n in email or n in name for n in _NOT_AUTHORS):
            authors.add(email)
    attributes[cv.GIT_AUTHORS] = sorted(authors)
    return attributes


def _without_credentials(url: str) -> str:
    """A remote URL without a user's password or token (``https://user:secret@host/...``)."""
    return re.sub(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", r"\1", url)


def _canonical(name: str) -> str:
    """A distribution's name as package indexes compare them (PEP 503): ``zope.interface``
    and ``Zope_Interface`` are ``zope-interface``; no dots, so it is one metadata key."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _python(where: Path) -> dict[str, Any]:
    """The installed distributions and versions (``importlib.metadata``: what ``pip freeze``
    lists, without running pip), and the project in ``where`` (``pyproject.toml``)."""
    attributes: dict[str, Any] = {cv.PYTHON_ENVIRONMENT: json.dumps(_packages(), sort_keys=True)}
    project = _project(where / "pyproject.toml")
    if project is not None:
        attributes[cv.PYTHON_PROJECT_NAME], attributes[cv.PYTHON_PROJECT_VERSION] = project
    return attributes


def _packages() -> dict[str, str]:
    """``{distribution: version}`` of what is installed on ``sys.path``, first found wins.

    Read from the ``<name>-<version>.dist-info`` folder names (the wheel specification puts
    both there), which takes a millisecond where parsing every ``METADATA`` file takes a tenth
    of a second; the few installs whose folder does not say (``.egg-info``) are asked through
    :mod:`importlib.metadata`.
    """
    packages: dict[str, str] = {}
    unnamed: list[Path] = []
    for entry in sys.path:
        try:
            found = list(os.scandir(entry or "."))
        except OSError:
            continue
        for item in found:
            stem, dot, kind = item.name.rpartition(".")
            if kind not in ("dist-info", "egg-info") or not dot:
                continue
            name, dash, version = stem.partition("-")
            if kind == "dist-info" and dash and name and version:
                packages.setdefault(_canonical(name), version)
            else:
                unnamed.append(Path(item.path))
    for path in unnamed:
        with contextlib.suppress(Exception):
            dist = _metadata.PathDistribution(path)
            name = dist.metadata["Name"]
            if name:
                packages.setdefault(_canonical(name), str(dist.version))
    return dict(sorted(packages.items()))


def _project(pyproject: Path) -> tuple[str, str] | None:
    """``(name, version)`` of the project a ``pyproject.toml`` declares (PEP 621 or Poetry)."""
    try:
        content = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    for table in (content.get("project"), content.get("tool", {}).get("poetry")):
        if isinstance(table, dict) and isinstance(table.get("name"), str):
            return table["name"], str(table.get("version", ""))
    return None
