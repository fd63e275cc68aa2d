"""The simvue-otel semantic conventions: every OpenTelemetry name that carries Simvue meaning.

This module and ``docs/conventions.md`` are the one statement of how a Simvue run is carried
by OTel signals; the Run layer writes these names, the mapping reads them, and collector
operators can route and filter on them. Change both together.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

# -- Run identity: Resource attributes (never evicted, present on every signal) ---------------

RUN_KEY: Final = "simvue.run.key"
"""Client-made UUID identifying the run across signals, pipelines and bridge replicas."""
RUN_NAME: Final = "simvue.run.name"
RUN_FOLDER: Final = "simvue.run.folder"

# -- The run's root span and its state snapshots ----------------------------------------------

ROOT_SPAN: Final = "simvue.run"
"""Name of the span that lasts as long as the run; its end carries the final state."""
SNAPSHOT_SPAN: Final = "simvue.run.snapshot"
"""Zero-length child of the root span exported at init and at each update, carrying the full
current state, so a run shows up live before its root span ends (spans export only on end)."""

RUN_DESCRIPTION: Final = "simvue.run.description"
RUN_TAGS: Final = "simvue.run.tags"
"""String array."""
RUN_METADATA_PREFIX: Final = "simvue.run.metadata."
"""One attribute per metadata leaf, nested keys joined with dots:
``simvue.run.metadata.solver.tol``. The bridge also accepts a JSON string or a map value."""
RUN_VISIBILITY: Final = "simvue.run.visibility"
"""``"private"`` (default), ``"tenant"`` or ``"public"``."""
RUN_VISIBILITY_USERS: Final = "simvue.run.visibility.users"
"""String array of user names the run is shared with."""
RUN_RETENTION: Final = "simvue.run.retention_seconds"
RUN_HEARTBEAT_TIMEOUT: Final = "simvue.run.heartbeat_timeout_seconds"
RUN_STATUS: Final = "simvue.run.status"
"""Explicit status on a snapshot or the root span: ``created``, ``running``, ``completed``,
``failed`` or ``terminated``. When absent on the ended root span, its OTel status decides:
ERROR → ``failed``, OK/UNSET → ``completed``."""

RUN_STATUSES: Final = ("created", "running", "completed", "failed", "terminated", "lost")
"""Every status a Simvue run can have (the server sets ``lost``; a client never does)."""
LIVE_STATUSES: Final = ("created", "running")
FINAL_STATUSES: Final = ("completed", "failed", "terminated")
"""Statuses a client ends a run with."""
ENDED_STATUSES: Final = (*FINAL_STATUSES, "lost")
"""Statuses of a run that has ended (it has an end time)."""
SETTABLE_STATUSES: Final = tuple(s for s in RUN_STATUSES if s != "lost")
"""Statuses a client may state."""

VISIBILITY_VALUES: Final = ("private", "tenant", "public")

# -- Exact metric points and events: log records -----------------------------------------------

METRICS_EVENT: Final = "simvue.metrics"
"""``event_name`` of a log record whose body is a map ``{metric name: number}``: one
``log_metrics`` call, all points exact (OTel metric instruments would aggregate them)."""
METRICS_STEP: Final = "simvue.metrics.step"
METRICS_TIME: Final = "simvue.metrics.time"
"""Seconds since the run started (Simvue's ``time``); the record's timestamp is Simvue's
``timestamp``."""

EVENT_EVENT: Final = "simvue.event"
"""``event_name`` of a log record whose body is an event message."""

EXCEPTION_EVENT: Final = "exception"
"""OTel's span event for a recorded exception; becomes a Simvue event with its traceback."""

# -- The app's own instruments -----------------------------------------------------------------


def quantile_metric(name: str, quantile: float) -> str:
    """Simvue metric name of one quantile of a summary: ``latency.q0.5``, ``latency.q0.99``,
    ``latency.q0`` (the minimum), ``latency.q1`` (the maximum): the quantile in its shortest
    positional decimal form, so the name reads as the quantile the sender chose."""
    text = format(Decimal(repr(float(quantile))), "f")  # positional: 1e-05 -> 0.00001
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{name}.q{text}"


# -- Resource metrics: emitted under OTel's names, stored under Simvue's -----------------------

PROCESS_CPU_UTILIZATION: Final = "process.cpu.utilization"
"""Fraction of all logical CPUs the process (a ``Run``: and its children) used since the last
measurement, unit ``1`` (the semantic conventions', and the system-metrics
instrumentation's, definition)."""
PROCESS_MEMORY_USAGE: Final = "process.memory.usage"
"""Resident memory, bytes."""
HW_GPU_UTILIZATION: Final = "hw.gpu.utilization"
"""Fraction of time a kernel ran on the GPU named by ``hw.id``, unit ``1``."""
HW_GPU_MEMORY_UTILIZATION: Final = "hw.gpu.memory.utilization"
"""Fraction of the GPU's memory in use, unit ``1``."""
HW_ID: Final = "hw.id"
HW_TYPE: Final = "hw.type"
HW_GPU_TASK: Final = "hw.gpu.task"
CPU_COUNT: Final = "simvue.system.cpu.count"
"""Resource attribute: logical CPUs of the host, which turns ``process.cpu.utilization``
(a fraction of all CPUs) into Simvue's percentage (100 = one core)."""

RESOURCE_CPU_PERCENT: Final = "resources/cpu.usage.percentage"
RESOURCE_MEMORY_MB: Final = "resources/cpu.usage.memory"
RESOURCE_GPU_PERCENT: Final = "resources/gpu.utilisation.percent.{index}"
RESOURCE_GPU_MEMORY: Final = "resources/gpu.utilisation.memory.{index}"

# -- System and environment: Resource attributes -> the run's system field and metadata -------
# OTel semantic-convention names where they exist (set by the SDK's host, os and process
# detectors, or by simvue-otel's own detection), ``simvue.*`` where OTel has none.

HOST_NAME: Final = "host.name"
HOST_ARCH: Final = "host.arch"
HOST_CPU_MODEL: Final = "host.cpu.model.name"
OS_TYPE: Final = "os.type"
OS_VERSION: Final = "os.version"
OS_DESCRIPTION: Final = "os.description"
PROCESS_RUNTIME_VERSION: Final = "process.runtime.version"
PROCESS_WORKING_DIRECTORY: Final = "process.working_directory"
GPU_NAME: Final = "simvue.system.gpu.name"
GPU_DRIVER: Final = "simvue.system.gpu.driver"

VCS_URL: Final = "vcs.repository.url.full"
VCS_REVISION: Final = "vcs.ref.head.revision"
VCS_REF_NAME: Final = "vcs.ref.head.name"
VCS_REF_TYPE: Final = "vcs.ref.head.type"
"""``branch`` or ``tag``."""
GIT_MESSAGE: Final = "simvue.git.message"
GIT_TIME: Final = "simvue.git.time"
"""The commit's time, UTC, Simvue's timestamp format."""
GIT_AUTHORS: Final = "simvue.git.authors"
"""String array of author e-mail addresses (bots and no-reply addresses left out)."""
GIT_DIRTY: Final = "simvue.git.dirty"
GIT_BLAME: Final = "simvue.git.blame"
"""Who answers for the checkout: the committer, or the local user when it has changes."""

PYTHON_ENVIRONMENT: Final = "simvue.python.environment"
"""JSON object ``{distribution: version}`` of the installed Python distributions."""
PYTHON_PROJECT_NAME: Final = "simvue.python.project.name"
PYTHON_PROJECT_VERSION: Final = "simvue.python.project.version"
SHELL_VARIABLES: Final = "simvue.shell"
"""JSON object of the environment variables the user asked to record."""

OS_SYSTEM_NAMES: Final = {
    "linux": "Linux",
    "darwin": "Darwin",
    "windows": "Windows",
    "freebsd": "FreeBSD",
    "netbsd": "NetBSD",
    "openbsd": "OpenBSD",
    "dragonflybsd": "DragonFly",
    "solaris": "SunOS",
    "aix": "AIX",
    "hpux": "HP-UX",
    "zos": "OS/390",
}
"""``os.type`` (OTel's lower-case values) as Python's ``platform.system()`` spells it, which
is what the official client stores in ``system.platform.system``."""

# -- Foreign telemetry (no simvue.run.* on its Resource) ---------------------------------------

SERVICE_NAME: Final = "service.name"
SERVICE_INSTANCE_ID: Final = "service.instance.id"
SERVICE_NAMESPACE: Final = "service.namespace"
FOREIGN_FOLDER: Final = "/otel"
"""Folder of runs made for telemetry that names no ``simvue.run.folder``."""
FOREIGN_RUN_KEY_ATTRIBUTES: Final = (
    "service.namespace",
    "service.name",
    "service.instance.id",
    "host.name",
    "process.pid",
)
"""Resource attributes that identify one service instance: one run each, never one per
request. When none but ``service.name`` is present, every attribute of the Resource is used."""

# -- Server-side bookkeeping -------------------------------------------------------------------

BOOKKEEPING_PREFIX: Final = "simvue_otel"
"""Top-level metadata keys starting with this are simvue-otel's own bookkeeping: the API keeps
them, the web view does not show them among the user's metadata."""
RUN_KEY_METADATA: Final = f"{BOOKKEEPING_PREFIX}_run_key"
"""The flat metadata key holding the run key on the Simvue run, so any process (an exporter,
``simvue-otel send``, a bridge replica) finds the run with a ``metadata.<key> == <run key>``
filter instead of making a second one: a Simvue server does not deduplicate runs."""

# -- Names: the official client's rules (simvue/models.py), on both sides of the wire ---------

NAME_PATTERN: Final = r"[a-zA-Z0-9\-_\s/.:]+"
"""Run names: letters, digits, whitespace and ``- _ / . :`` (``my run``, ``a:b``, ``step/1``)."""
TAG_PATTERN: Final = r"[\w\-\s.]+"
"""Tags: word characters (any script), whitespace, ``-`` and ``.``."""
METRIC_NAME_PATTERN: Final = r"[a-zA-Z0-9\-_\s/.:=><+()%]+"
"""Metric names: as run names, plus ``= > < + ( ) %``."""
FOLDER_PATTERN: Final = r"/.*"
"""Folder paths start with ``/``; simvue-otel also refuses empty, ``.`` and ``..`` parts and
control characters, which no path can use."""
MAX_NAME_LENGTH: Final = 255
MAX_METRIC_NAME_LENGTH: Final = 255
"""Longest metric name, in characters. The official client sets no bound; 255 is the run
name's, which OTel-derived names (instrument plus attributes) are cut to fit."""
MAX_METRICS_PER_RUN: Final = 10_000
"""Most distinct metric names one run may hold. Neither the official client nor any known
Simvue server documents a bound; this one keeps a run's summary (sent with every run listing)
small while leaving far more names than the web views can show."""

# -- Bounds a Simvue server is sure to accept (beyond them a run could be refused, 422) ------
# The official client (simvue 2.6.2) states only lower bounds: ``RunInput.ttl: PositiveInt``
# (simvue/models.py), ``Run.ttl: NonNegativeInt`` (simvue/api/objects/run.py), metadata a
# ``dict`` of any depth. The upper bounds below are simvue-otel's, chosen so that every server
# takes them whatever it stores them in; the Run refuses past them and the mapping leaves
# such values out (docs/conventions.md, "Limits").

MAX_RETENTION_SECONDS: Final = 2**31 - 1
"""Longest retention period (and heartbeat timeout): about 68 years, the largest number of
seconds a 32-bit integer column, a 64-bit one, a double and a date-time sum all hold. No
retention (``None``) keeps a run for good."""
MAX_METADATA_DEPTH: Final = 32
"""Most levels of nested metadata (``a.b.c`` is 3): the server stores metadata nested, inside
its own documents, and refuses a body nested too deep (the local server, past 64 levels)."""
MAX_METADATA_BYTES: Final = 2**20
"""Largest metadata of one run, as UTF-8 JSON text: 1 MiB, the default request-body limit of
common reverse proxies (nginx's ``client_max_body_size``), which a run's POST must pass."""

# -- Log levels --------------------------------------------------------------------------------

LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


def log_level_for(severity_number: int | None) -> str:
    """Simvue log level for an OTel severity number (1-24; 0/None = unspecified → info)."""
    if not severity_number:
        return "info"
    if severity_number <= 8:  # TRACE*, DEBUG*
        return "debug"
    if severity_number <= 12:  # INFO*
        return "info"
    if severity_number <= 16:  # WARN*
        return "warning"
    if severity_number <= 20:  # ERROR*
        return "error"
    return "critical"  # FATAL*
