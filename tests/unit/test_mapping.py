"""The OTel → Simvue mapping, fed with real OpenTelemetry SDK objects.

Every test builds telemetry with the SDK (tracer, logger and meter providers with in-memory
exporters/readers), converts it with the SDK adapters of ``mapping.sdk`` and maps it with
``Mapper``, then checks the Simvue records exactly.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from simvue_otel._internal import conventions as cv
from simvue_otel._internal.errors import SimvueValidationError
from simvue_otel._internal.mapping import Mapper
from simvue_otel._internal.mapping.model import OtelLog, OtelMetric, OtelSpan
from simvue_otel._internal.mapping.records import (
    EventRecord,
    MetricRecord,
    Record,
    RunRecord,
    RunRef,
)
from simvue_otel._internal.mapping.sdk import (
    attributes_from_sdk,
    logs_from_sdk,
    map_sdk_logs,
    metrics_from_sdk,
    span_from_sdk,
    spans_from_sdk,
)

NS = 1_000_000_000
T0_NS = 1_700_000_000 * NS
"""A fixed start time (ns) so that timestamps and durations are exact."""
T0 = 1_700_000_000.0

KEYED = {
    cv.RUN_KEY: "run-key-1",
    cv.RUN_NAME: "my-run",
    cv.RUN_FOLDER: "/proj/a",
}
KEYED_REF = RunRef("run-key-1", "my-run", "/proj/a")
FOREIGN = {cv.SERVICE_NAME: "checkout", cv.SERVICE_INSTANCE_ID: "instance-1"}


def approx(value: float) -> Any:
    """Seconds converted from nanoseconds by float multiplication: equal to within 1 µs."""
    return pytest.approx(value, abs=1e-6)


def of_type(records: list[Record], kind: type) -> list[Any]:
    return [r for r in records if isinstance(r, kind)]


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resource.create reads these; keep the Resources exactly what each test says."""
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)


class Traces:
    """A tracer provider exporting to memory; ``finished()`` gives the neutral spans."""

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(resource=Resource.create(dict(attributes)))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test_mapping")

    def finished(self) -> list[OtelSpan]:
        spans = spans_from_sdk(self.exporter.get_finished_spans())
        self.exporter.clear()
        return spans


class Logs:
    """A logger provider exporting to memory; ``finished()`` gives the neutral log records."""

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        self.exporter = InMemoryLogRecordExporter()
        self.provider = LoggerProvider(resource=Resource.create(dict(attributes)))
        self.provider.add_log_record_processor(SimpleLogRecordProcessor(self.exporter))
        self.logger = self.provider.get_logger("test_mapping")

    def finished(self) -> list[OtelLog]:
        logs = logs_from_sdk(self.exporter.get_finished_logs())
        self.exporter.clear()
        return logs


class Meters:
    """A meter provider read by an in-memory reader; ``collect()`` gives neutral metrics."""

    def __init__(self, attributes: Mapping[str, Any]) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(
            resource=Resource.create(dict(attributes)), metric_readers=[self.reader]
        )
        self.meter = self.provider.get_meter("test_mapping")

    def collect(self) -> list[OtelMetric]:
        return metrics_from_sdk(self.reader.get_metrics_data())


@pytest.fixture
def traces() -> Iterator[Callable[..., Traces]]:
    made: list[Traces] = []

    def make(attributes: Mapping[str, Any] = KEYED) -> Traces:
        made.append(Traces(attributes))
        return made[-1]

    yield make
    for item in made:
        item.provider.shutdown()


@pytest.fixture
def logs() -> Iterator[Callable[..., Logs]]:
    made: list[Logs] = []

    def make(attributes: Mapping[str, Any] = KEYED) -> Logs:
        made.append(Logs(attributes))
        return made[-1]

    yield make
    for item in made:
        item.provider.shutdown()


@pytest.fixture
def meters() -> Iterator[Callable[..., Meters]]:
    made: list[Meters] = []

    def make(attributes: Mapping[str, Any] = KEYED) -> Meters:
        made.append(Meters(attributes))
        return made[-1]

    yield make
    for item in made:
        item.provider.shutdown()


def ended_span(
    traces: Traces, name: str, *, start: int = T0_NS, end: int = T0_NS + NS, **attributes: Any
) -> OtelSpan:
    """One span started and ended at exact times, as the mapper sees it."""
    span = traces.tracer.start_span(name, start_time=start, attributes=attributes or None)
    span.end(end_time=end)
    (result,) = traces.finished()
    return result


# -- 1. Run identity ---------------------------------------------------------------------------


def test_keyed_resource_names_the_run_on_every_signal(traces, logs, meters) -> None:
    """simvue.run.key/name/folder on the Resource become the RunRef of spans, logs and metrics."""
    mapper = Mapper()
    span_records = mapper.spans([ended_span(traces(), "work")])
    log = logs()
    log.logger.emit(body="hello", timestamp=T0_NS)
    log_records = mapper.logs(log.finished())
    meter = meters()
    meter.meter.create_counter("c").add(1)
    metric_records = mapper.metrics(meter.collect())

    records = span_records + log_records + metric_records
    assert len(records) == 3
    assert {r.run for r in records} == {KEYED_REF}
    assert not of_type(records, RunRecord)  # keyed runs are never announced by the mapper


def test_trailing_slash_of_folder_is_normalised(traces) -> None:
    """A folder attribute with a trailing slash is normalised as validate_folder does."""
    span = ended_span(traces({cv.RUN_KEY: "k", cv.RUN_FOLDER: "/proj/a/"}), "work")
    (record,) = Mapper().spans([span])
    assert record.run == RunRef("k", None, "/proj/a")


@pytest.mark.parametrize("folder", ["no-leading-slash", "/a//b", "/a/../b", "/a\nb"])
def test_invalid_folder_falls_back_to_root(traces, caplog, folder: str) -> None:
    """An invalid simvue.run.folder is replaced by "/" with a warning, never an exception."""
    attributes = {cv.RUN_KEY: "k", cv.RUN_NAME: "n", cv.RUN_FOLDER: folder}
    with caplog.at_level(logging.WARNING, logger="simvue_otel.mapping"):
        (record,) = Mapper().spans([ended_span(traces(attributes), "work")])
    assert record.run == RunRef("k", "n", "/")
    assert any("simvue.run.folder" in m for m in caplog.messages)


def test_invalid_folder_of_a_foreign_run_falls_back_to_root(traces) -> None:
    """A foreign Resource with a bad folder attribute gets "/" too (not /otel), without error."""
    span = ended_span(traces({**FOREIGN, cv.RUN_FOLDER: "bad"}), "work")
    announced = Mapper().spans([span])[0]
    assert isinstance(announced, RunRecord)
    assert announced.run.folder == "/"


def test_run_name_is_sanitised(traces) -> None:
    """Runs of characters the official name rule refuses become '-', ends are stripped;
    spaces, ':' and '/' are kept."""
    span = ended_span(traces({cv.RUN_KEY: "k", cv.RUN_NAME: "my run: #1! a/b"}), "work")
    (record,) = Mapper().spans([span])
    assert record.run == RunRef("k", "my run: -1- a/b", "/")


def test_foreign_run_key_is_deterministic(traces) -> None:
    """The same service instance gives the same key in two mappers; another instance another."""
    first = ended_span(traces(FOREIGN), "work")
    again = ended_span(traces(FOREIGN), "work")  # a second provider, an equal Resource
    other = ended_span(traces({**FOREIGN, cv.SERVICE_INSTANCE_ID: "instance-2"}), "work")

    key = Mapper().spans([first])[0].run.key
    assert Mapper().spans([again])[0].run.key == key
    assert Mapper().spans([other])[0].run.key != key
    assert str(uuid.UUID(key)) == key  # a UUID, like a client-made run key


def test_foreign_run_is_announced_once(traces) -> None:
    """Foreign telemetry: sanitised service name, folder /otel, and one running RunRecord."""
    # The SDK's default name is "unknown_service:" + the executable; set it to be exact.
    tracing = traces(
        {cv.SERVICE_NAME: "unknown_service:python", cv.SERVICE_INSTANCE_ID: "instance-1"}
    )
    mapper = Mapper()
    tracing.tracer.start_span("work", start_time=T0_NS).end(end_time=T0_NS + NS)
    first = mapper.spans(tracing.finished())
    tracing.tracer.start_span("work", start_time=T0_NS + 2 * NS).end(end_time=T0_NS + 3 * NS)
    second = mapper.spans(tracing.finished())

    announced, event = first
    assert isinstance(announced, RunRecord)
    assert isinstance(event, EventRecord)
    assert announced.run.name == "unknown_service:python"
    assert announced.run.folder == cv.FOREIGN_FOLDER
    assert event.run == announced.run
    assert announced.status == "running"
    assert announced.tags == ("otel",)
    assert announced.description == "Telemetry of unknown_service:python"
    assert announced.metadata["resource.service.name"] == "unknown_service:python"
    assert announced.metadata["resource.service.instance.id"] == "instance-1"
    assert announced.started == approx(T0)
    assert announced.observed == approx(T0)
    assert announced.ended is None

    assert [type(r) for r in second] == [EventRecord]
    assert second[0].run == announced.run


# -- 2. The root span ----------------------------------------------------------------------------


def test_root_span_attributes_become_the_run_record(traces) -> None:
    """Description, tags, flat metadata, visibility, retention and heartbeat map one to one."""
    span = ended_span(
        traces(),
        cv.ROOT_SPAN,
        start=T0_NS,
        end=T0_NS + 5 * NS,
        **{
            cv.RUN_DESCRIPTION: "a study",
            cv.RUN_TAGS: ["cfd", "test", "cfd"],
            cv.RUN_METADATA_PREFIX + "solver.tol": 1e-6,
            cv.RUN_METADATA_PREFIX + "solver.name": "cg",
            cv.RUN_METADATA_PREFIX + "seed": 42,
            cv.RUN_VISIBILITY: "tenant",
            cv.RUN_RETENTION: 3600,
            cv.RUN_HEARTBEAT_TIMEOUT: 120,
        },
    )
    (record,) = Mapper().spans([span])
    assert record == RunRecord(
        run=KEYED_REF,
        status="completed",
        observed=approx(T0 + 5),
        description="a study",
        tags=("cfd", "test"),
        metadata={"solver.tol": 1e-6, "solver.name": "cg", "seed": 42},
        visibility={"public": False, "tenant": True, "users": []},
        ttl=3600,
        heartbeat_timeout=120,
        started=approx(T0),
        ended=approx(T0 + 5),
    )


def test_root_span_shared_with_users(traces) -> None:
    """simvue.run.visibility.users becomes the wire shape with the user list."""
    span = ended_span(traces(), cv.ROOT_SPAN, **{cv.RUN_VISIBILITY_USERS: ["alice", "bob"]})
    (record,) = Mapper().spans([span])
    assert record.visibility == {"public": False, "tenant": False, "users": ["alice", "bob"]}


def test_root_span_shared_with_a_single_user_string(traces) -> None:
    """A single string in simvue.run.visibility.users names one user (as a single string in
    simvue.run.tags names one tag), not one user per character."""
    span = ended_span(traces(), cv.ROOT_SPAN, **{cv.RUN_VISIBILITY_USERS: "alice"})
    (record,) = Mapper().spans([span])
    assert record.visibility == {"public": False, "tenant": False, "users": ["alice"]}


def test_invalid_tags_are_left_out_and_the_rest_deduplicated(traces) -> None:
    """When some tags break the rules, exactly those are dropped ("invalid tags left out"):
    empty, longer than 255 characters, or with a character the official rule refuses;
    duplicates are removed as validate_tags removes them."""
    tags = ["good", "", "good", "x" * 256, "a:b", "fine"]
    span = ended_span(traces(), cv.ROOT_SPAN, **{cv.RUN_TAGS: tags})
    (record,) = Mapper().spans([span])
    assert record.tags == ("good", "fine")


def test_root_span_public_and_private_visibility(traces) -> None:
    """'public' opens the run to all; 'private' states private; no attribute states nothing
    (None: the run keeps the visibility it has)."""
    tracing = traces()
    mapper = Mapper()
    public = ended_span(tracing, cv.ROOT_SPAN, **{cv.RUN_VISIBILITY: "public"})
    private = ended_span(tracing, cv.ROOT_SPAN, **{cv.RUN_VISIBILITY: "private"})
    unset = ended_span(tracing, cv.ROOT_SPAN)
    assert mapper.spans([public])[0].visibility == {"public": True, "tenant": False, "users": []}
    assert mapper.spans([private])[0].visibility == {"public": False, "tenant": False, "users": []}
    assert mapper.spans([unset])[0].visibility is None


def test_root_span_metadata_as_json_string(traces) -> None:
    """A whole-map simvue.run.metadata JSON string is flattened; leaf attributes win."""
    span = ended_span(
        traces(),
        cv.ROOT_SPAN,
        **{
            "simvue.run.metadata": '{"solver": {"tol": 0.1, "iters": 10}, "x": "y"}',
            cv.RUN_METADATA_PREFIX + "solver.tol": 0.5,
        },
    )
    (record,) = Mapper().spans([span])
    assert record.metadata == {"solver.tol": 0.5, "solver.iters": 10, "x": "y"}


def test_array_metadata_values_become_their_json_text(traces) -> None:
    """Simvue metadata values are scalars: an OTel array (or a JSON list) is stored as text."""
    span = ended_span(
        traces(),
        cv.ROOT_SPAN,
        **{
            cv.RUN_METADATA_PREFIX + "sizes": [1, 2, 3],
            cv.RUN_METADATA_PREFIX + "names": ("a", "b"),
            "simvue.run.metadata": '{"grid": [64, 64]}',
        },
    )
    (record,) = Mapper().spans([span])
    assert record.metadata == {"sizes": "[1, 2, 3]", "names": '["a", "b"]', "grid": "[64, 64]"}


def test_invalid_run_attributes_are_left_out(traces) -> None:
    """Bad visibility, non-positive retention and a non-string description are dropped."""
    span = ended_span(
        traces(),
        cv.ROOT_SPAN,
        **{
            cv.RUN_DESCRIPTION: 7,
            cv.RUN_VISIBILITY: "everyone",
            cv.RUN_RETENTION: 0,
            cv.RUN_HEARTBEAT_TIMEOUT: -5,
        },
    )
    (record,) = Mapper().spans([span])
    assert record.description is None
    assert record.visibility is None
    assert record.ttl is None
    assert record.heartbeat_timeout is None
    assert record.status == "completed"


def test_exception_in_root_span_fails_the_run(traces) -> None:
    """An exception escaping the root span: status failed, and an error event with traceback."""
    tracing = traces()
    with (
        pytest.raises(ValueError, match="boom"),
        tracing.tracer.start_as_current_span(cv.ROOT_SPAN, start_time=T0_NS),
    ):
        raise ValueError("boom")
    records = Mapper().spans(tracing.finished())

    assert [type(r) for r in records] == [RunRecord, EventRecord]
    run, event = records
    assert run.status == "failed"
    assert run.started == approx(T0)
    assert run.ended is not None
    assert run.ended >= run.started
    assert event.run == KEYED_REF
    assert event.level == "error"
    assert event.message.startswith("ValueError: boom\n")
    assert "Traceback (most recent call last)" in event.message
    assert 'raise ValueError("boom")' in event.message


def test_error_status_without_exception_fails_the_run(traces) -> None:
    """span.set_status(ERROR) alone makes the run failed, with no event."""
    tracing = traces()
    with tracing.tracer.start_as_current_span(cv.ROOT_SPAN) as span:
        span.set_status(Status(StatusCode.ERROR, "diverged"))
    records = Mapper().spans(tracing.finished())
    assert [(type(r), r.status) for r in records] == [(RunRecord, "failed")]


def test_explicit_status_attribute_wins(traces) -> None:
    """simvue.run.status on the ended root span decides the final status."""
    tracing = traces()
    with tracing.tracer.start_as_current_span(cv.ROOT_SPAN) as span:
        span.set_attribute(cv.RUN_STATUS, "terminated")
    (record,) = Mapper().spans(tracing.finished())
    assert record.status == "terminated"


def test_non_final_status_attribute_on_ended_root_span_is_ignored(traces) -> None:
    """An ended root span cannot leave the run 'running': its OTel status decides."""
    span = ended_span(traces(), cv.ROOT_SPAN, **{cv.RUN_STATUS: "running"})
    (record,) = Mapper().spans([span])
    assert record.status == "completed"


def test_keyboard_interrupt_in_root_span_completes(traces) -> None:
    """The SDK records only Exception subclasses, so a KeyboardInterrupt leaves the span's
    status unset and the mapping says completed. The Run layer sets simvue.run.status to
    'terminated' itself when it is interrupted; the mapping does not guess."""
    tracing = traces()
    with (
        pytest.raises(KeyboardInterrupt),
        tracing.tracer.start_as_current_span(cv.ROOT_SPAN),
    ):
        raise KeyboardInterrupt
    records = Mapper().spans(tracing.finished())
    assert [(type(r), r.status) for r in records] == [(RunRecord, "completed")]


def test_span_events_of_the_root_span_become_events(traces) -> None:
    """A plain span event on the root span becomes an info event with its attributes."""
    tracing = traces()
    span = tracing.tracer.start_span(cv.ROOT_SPAN, start_time=T0_NS)
    span.add_event("checkpoint", {"step": 3, "file": "a.h5"}, timestamp=T0_NS + NS)
    span.end(end_time=T0_NS + 2 * NS)
    records = Mapper().spans(tracing.finished())
    assert records[1] == EventRecord(KEYED_REF, "checkpoint file=a.h5 step=3", approx(T0 + 1))


# -- 3. Live state ------------------------------------------------------------------------------


def test_snapshot_span_shows_the_run_running(traces) -> None:
    """A simvue.run.snapshot span gives a running RunRecord that is not ended."""
    span = ended_span(
        traces(),
        cv.SNAPSHOT_SPAN,
        start=T0_NS + NS,
        end=T0_NS + NS,
        **{cv.RUN_DESCRIPTION: "live", cv.RUN_TAGS: ["a"]},
    )
    (record,) = Mapper().spans([span])
    assert record == RunRecord(
        run=KEYED_REF,
        status="running",
        observed=approx(T0 + 1),
        description="live",
        tags=("a",),
        started=approx(T0 + 1),
        ended=None,
    )


def test_snapshot_span_may_say_created(traces) -> None:
    """simvue.run.status 'created' on a snapshot keeps the run created, without a start."""
    span = ended_span(traces(), cv.SNAPSHOT_SPAN, **{cv.RUN_STATUS: "created"})
    (record,) = Mapper().spans([span])
    assert record.status == "created"
    assert record.started is None
    assert record.ended is None


def test_snapshot_span_cannot_end_the_run(traces) -> None:
    """A final status on a snapshot is not final: the run shows running."""
    span = ended_span(traces(), cv.SNAPSHOT_SPAN, **{cv.RUN_STATUS: "completed"})
    (record,) = Mapper().spans([span])
    assert record.status == "running"
    assert record.ended is None


def test_pending_root_span_shows_the_run_running(traces) -> None:
    """A root span seen live at its start (span_from_sdk on a live SDK span) is running."""
    tracing = traces()
    live = tracing.tracer.start_span(
        cv.ROOT_SPAN, start_time=T0_NS, attributes={cv.RUN_DESCRIPTION: "starting"}
    )
    try:
        neutral = span_from_sdk(live)
        assert neutral.end is None
        records = Mapper().pending_span(neutral)
    finally:
        live.end()
    assert records == [
        RunRecord(
            run=KEYED_REF,
            status="running",
            observed=approx(T0),
            description="starting",
            started=approx(T0),
            ended=None,
        )
    ]


def test_pending_other_span_gives_nothing(traces) -> None:
    """Only the root span shows anything at its start."""
    tracing = traces()
    live = tracing.tracer.start_span("work", start_time=T0_NS)
    try:
        assert Mapper().pending_span(span_from_sdk(live)) == []
    finally:
        live.end()


# -- 4. Other spans -----------------------------------------------------------------------------


def test_other_span_becomes_one_info_event(traces) -> None:
    """By default each other span ends as one event stating its duration."""
    span = ended_span(traces(), "work", start=T0_NS, end=T0_NS + 250_000_000)
    assert Mapper().spans([span]) == [
        EventRecord(KEYED_REF, "span 'work' ended after 250.0 ms", approx(T0 + 0.25), "info")
    ]


def test_failed_other_span_is_an_error_event_with_its_exception(traces) -> None:
    """A child span failing by exception: an error event, then its exception event."""
    tracing = traces()
    with (
        pytest.raises(RuntimeError),
        tracing.tracer.start_as_current_span("work", start_time=T0_NS),
    ):
        raise RuntimeError("disk full")
    records = Mapper().spans(tracing.finished())
    assert [(type(r), r.level) for r in records] == [(EventRecord, "error")] * 2
    assert records[0].message.startswith("span 'work' ended after ")
    assert records[0].message.endswith(" ms with an error: RuntimeError: disk full")
    assert records[1].message.startswith("RuntimeError: disk full\nTraceback")


def test_errors_policy_keeps_only_failed_spans(traces) -> None:
    """span_events='errors' drops successful spans and keeps failed ones at level error."""
    tracing = traces()
    tracing.tracer.start_span("ok", start_time=T0_NS).end(end_time=T0_NS + NS)
    bad = tracing.tracer.start_span("bad", start_time=T0_NS)
    bad.set_status(Status(StatusCode.ERROR))
    bad.end(end_time=T0_NS + 2 * NS)
    records = Mapper(span_events="errors").spans(tracing.finished())
    assert records == [
        EventRecord(KEYED_REF, "span 'bad' ended after 2000.0 ms in error", approx(T0 + 2), "error")
    ]


def test_none_policy_drops_other_spans(traces) -> None:
    """span_events='none' gives no event for other spans, failed or not."""
    tracing = traces()
    tracing.tracer.start_span("ok").end()
    bad = tracing.tracer.start_span("bad")
    bad.set_status(Status(StatusCode.ERROR, "x"))
    bad.end()
    assert Mapper(span_events="none").spans(tracing.finished()) == []


def test_none_policy_keeps_the_run_record(traces) -> None:
    """The policy concerns other spans only: the root span still gives its RunRecord."""
    span = ended_span(traces(), cv.ROOT_SPAN)
    assert [type(r) for r in Mapper(span_events="none").spans([span])] == [RunRecord]


def test_invalid_span_event_policy_is_refused() -> None:
    """An unknown policy raises SimvueValidationError naming span_events."""
    with pytest.raises(SimvueValidationError) as info:
        Mapper(span_events="some")
    assert info.value.field == "span_events"


# -- 5. Logs ------------------------------------------------------------------------------------


def test_metrics_log_with_step_and_time(logs) -> None:
    """A simvue.metrics record gives one exact MetricRecord with its step, time, timestamp."""
    log = logs()
    log.logger.emit(
        body={"loss": 0.25, "accuracy": 0.75, "epoch": 3},
        event_name=cv.METRICS_EVENT,
        attributes={cv.METRICS_STEP: 7, cv.METRICS_TIME: 12.5},
        timestamp=T0_NS + 3 * NS,
    )
    assert Mapper().logs(log.finished()) == [
        MetricRecord(
            KEYED_REF, {"loss": 0.25, "accuracy": 0.75, "epoch": 3.0}, 7, 12.5, approx(T0 + 3)
        )
    ]


def test_metrics_log_without_step_counts_per_run(logs) -> None:
    """Without a step attribute steps count 0, 1, 2 per run; time is since the first record."""
    first, second = logs(), logs({cv.RUN_KEY: "other"})
    for i, offset in enumerate((0.0, 1.0, 2.5)):
        stamp = T0_NS + int(offset * NS)
        first.logger.emit(body={"x": i}, event_name=cv.METRICS_EVENT, timestamp=stamp)
    second.logger.emit(body={"y": 1}, event_name=cv.METRICS_EVENT, timestamp=T0_NS)
    mapper = Mapper()
    records = mapper.logs(first.finished()) + mapper.logs(second.finished())
    assert [(r.run.key, r.step, r.values) for r in records] == [
        ("run-key-1", 0, {"x": 0}),
        ("run-key-1", 1, {"x": 1}),
        ("run-key-1", 2, {"x": 2}),
        ("other", 0, {"y": 1}),
    ]
    assert [r.time for r in records] == [0.0, approx(1.0), approx(2.5), 0.0]


def test_metric_rows_map_as_their_sdk_log_records(logs) -> None:
    """A Run's in-process rows (Resource, body, step, time, timestamp) give exactly the records
    the same fields give as SDK log records, through both SDK adapters."""
    log = logs()
    fields = [({"a": 1.5, "b": 2}, 0, 0.25, T0_NS), ({"a": -1.0}, 7, 3.0, T0_NS + 2 * NS)]
    fields.append(({"c": 1e300}, 3, 12.5, T0_NS + NS))  # a step below the highest so far
    for body, step, elapsed, stamp in fields:
        log.logger.emit(
            body=body,
            event_name=cv.METRICS_EVENT,
            attributes={cv.METRICS_STEP: step, cv.METRICS_TIME: elapsed},
            timestamp=stamp,
        )
    sdk_records = log.exporter.get_finished_logs()
    resource = attributes_from_sdk(sdk_records[0].resource.attributes)
    rows = [(resource, dict(body), step, t, stamp * 1e-9) for body, step, t, stamp in fields]
    from_rows = Mapper().metric_rows(rows)
    assert from_rows == map_sdk_logs(Mapper(), sdk_records)
    assert from_rows == Mapper().logs(log.finished())
    assert [(r.run, r.step, r.time) for r in from_rows] == [
        (KEYED_REF, 0, 0.25),
        (KEYED_REF, 7, 3.0),
        (KEYED_REF, 3, 12.5),
    ]


def test_metric_rows_of_two_runs_keep_each_run(logs) -> None:
    """Rows of two Resources interleaved stay with their own runs, each announced once."""
    other = {cv.RUN_KEY: "run-key-2", cv.RUN_NAME: "other", cv.RUN_FOLDER: "/"}
    rows = [
        (KEYED, {"x": 1.0}, 0, 0.0, T0),
        (other, {"x": 2.0}, 0, 0.0, T0),
        (KEYED, {"x": 3.0}, 1, 1.0, T0 + 1),
    ]
    records = Mapper().metric_rows(rows)
    assert [(r.run.key, r.values) for r in records] == [
        ("run-key-1", {"x": 1.0}),
        ("run-key-2", {"x": 2.0}),
        ("run-key-1", {"x": 3.0}),
    ]


def test_metrics_log_step_continues_after_explicit_step(logs) -> None:
    """After an explicit step n, a record without a step gets n + 1."""
    log = logs()
    log.logger.emit(body={"x": 1}, event_name=cv.METRICS_EVENT, attributes={cv.METRICS_STEP: 5})
    log.logger.emit(body={"x": 2}, event_name=cv.METRICS_EVENT)
    assert [r.step for r in Mapper().logs(log.finished())] == [5, 6]


def test_metrics_log_leaves_out_non_numeric_values(logs) -> None:
    """Strings are left out, booleans become 1.0/0.0; nothing numeric means no record."""
    log = logs()
    log.logger.emit(
        body={"a": 1.5, "label": "x", "ok": True, "bad": False}, event_name=cv.METRICS_EVENT
    )
    log.logger.emit(body={"label": "only text"}, event_name=cv.METRICS_EVENT)
    records = Mapper().logs(log.finished())
    assert len(records) == 1
    assert records[0].values == {"a": 1.5, "ok": 1.0, "bad": 0.0}
    assert isinstance(records[0].values["ok"], float)


@pytest.mark.parametrize("body", ["1.5", 3.0, [1, 2], None])
def test_metrics_log_body_must_be_a_map(logs, body: Any) -> None:
    """A simvue.metrics record whose body is not a map gives no record (and no event)."""
    log = logs()
    log.logger.emit(body=body, event_name=cv.METRICS_EVENT)
    assert Mapper().logs(log.finished()) == []


def test_skipped_records_are_counted_by_reason(logs) -> None:
    """What the mapping leaves out is counted (for the bridge's partial success), once."""
    log = logs()
    log.logger.emit(body="1.5", event_name=cv.METRICS_EVENT)
    log.logger.emit(body=[1, 2], event_name=cv.METRICS_EVENT)
    log.logger.emit(body={"label": "text"}, event_name=cv.METRICS_EVENT)
    log.logger.emit(body="", severity_number=SeverityNumber.INFO)
    log.logger.emit(body={"a": 1.0}, event_name=cv.METRICS_EVENT)
    mapper = Mapper()
    assert len(mapper.logs(log.finished())) == 1
    assert mapper.take_skipped() == {
        "simvue.metrics record whose body is not a map of metric values": 2,
        "simvue.metrics record with no numeric value": 1,
        "log record with an empty body": 1,
    }
    assert mapper.take_skipped() == {}


def test_default_time_is_measured_from_the_earliest_record_of_the_batch(logs) -> None:
    """Points without simvue.metrics.time in an unsorted batch, and an earlier batch that comes
    later, are timed from the earliest record seen: never all 0, never negative."""
    log = logs()
    for second in (13, 11, 12):
        log.logger.emit(body={"a": 1.0}, event_name=cv.METRICS_EVENT, timestamp=T0_NS + second * NS)
    mapper = Mapper()
    assert [r.time for r in mapper.logs(log.finished())] == [approx(2), approx(0), approx(1)]
    earlier = logs()
    for second in (0, 1):
        earlier.logger.emit(body={"a": 1.0}, event_name=cv.METRICS_EVENT,
                            timestamp=T0_NS + second * NS)  # fmt: skip
    assert [r.time for r in mapper.logs(earlier.finished())] == [approx(0), approx(1)]


def test_summary_quantiles_become_metrics() -> None:
    """A summary point: count, sum, mean, and one metric per quantile, named by cv."""
    from simvue_otel._internal.mapping.model import HistogramValue, OtelPoint

    value = HistogramValue(count=4, sum=10.0, quantiles=((0.0, 1.0), (0.5, 2.5), (0.99, 4.0),
                                                         (1.0, 4.0)))  # fmt: skip
    metric = OtelMetric(KEYED, "rt", "histogram", (OtelPoint({"op": "x"}, T0, None, value),))
    (record,) = Mapper().metrics([metric])
    assert dict(record.values) == {
        "rt(op=x).count": 4, "rt(op=x).sum": 10.0, "rt(op=x).mean": 2.5,
        "rt(op=x).q0": 1.0, "rt(op=x).q0.5": 2.5, "rt(op=x).q0.99": 4.0, "rt(op=x).q1": 4.0,
    }  # fmt: skip
    assert cv.quantile_metric("rt", 1e-05) == "rt.q0.00001"


def test_event_log_with_warn_severity(logs) -> None:
    """A simvue.event record becomes an EventRecord at the level of its severity."""
    log = logs()
    log.logger.emit(
        body="mesh refined",
        event_name=cv.EVENT_EVENT,
        severity_number=SeverityNumber.WARN,
        timestamp=T0_NS + NS,
    )
    assert Mapper().logs(log.finished()) == [
        EventRecord(KEYED_REF, "mesh refined", approx(T0 + 1), "warning")
    ]


def test_plain_log_with_map_body_is_json_text(logs) -> None:
    """Any other log record is an event; a map body is written as JSON with sorted keys."""
    log = logs()
    log.logger.emit(body={"b": 1, "a": "x"}, severity_number=SeverityNumber.ERROR, timestamp=T0_NS)
    assert Mapper().logs(log.finished()) == [
        EventRecord(KEYED_REF, '{"a": "x", "b": 1}', approx(T0), "error")
    ]


def test_plain_log_without_severity_is_info(logs) -> None:
    """A log record with no severity becomes an info event."""
    log = logs()
    log.logger.emit(body="hello", timestamp=T0_NS)
    (record,) = Mapper().logs(log.finished())
    assert record.level == "info"
    assert record.message == "hello"


@pytest.mark.parametrize("body", ["", None])
def test_empty_log_body_gives_nothing(logs, body: Any) -> None:
    """A log record with an empty or absent body gives no event."""
    log = logs()
    log.logger.emit(body=body, severity_number=SeverityNumber.INFO)
    assert Mapper().logs(log.finished()) == []


def test_event_name_attribute_selects_metrics(logs) -> None:
    """The event.name attribute (older senders) works like event_name for metrics."""
    log = logs()
    log.logger.emit(
        body={"x": 2.0},
        attributes={"event.name": cv.METRICS_EVENT, cv.METRICS_STEP: 4},
        timestamp=T0_NS,
    )
    assert Mapper().logs(log.finished()) == [
        MetricRecord(KEYED_REF, {"x": 2.0}, 4, 0.0, approx(T0))
    ]


def test_event_name_attribute_selects_events(logs) -> None:
    """The event.name attribute set to simvue.event gives a plain event, without extras."""
    log = logs()
    log.logger.emit(
        body="done",
        attributes={"event.name": cv.EVENT_EVENT},
        severity_number=SeverityNumber.INFO,
        timestamp=T0_NS,
    )
    assert Mapper().logs(log.finished()) == [EventRecord(KEYED_REF, "done", approx(T0), "info")]


def test_log_with_exception_attributes_carries_the_exception(logs) -> None:
    """A plain log record with exception.* attributes appends the exception text."""
    log = logs()
    log.logger.emit(
        body="step failed",
        severity_number=SeverityNumber.ERROR,
        attributes={"exception.type": "OSError", "exception.message": "no space"},
    )
    (record,) = Mapper().logs(log.finished())
    assert record.message == "step failed\nOSError: no space"
    assert record.level == "error"


def test_foreign_logs_announce_their_run(logs) -> None:
    """Logs from a Resource without a run key announce the foreign run first."""
    log = logs(FOREIGN)
    log.logger.emit(body="hi", timestamp=T0_NS)
    announced, event = Mapper().logs(log.finished())
    assert isinstance(announced, RunRecord)
    assert announced.run == RunRef(announced.run.key, "checkout", "/otel")
    assert event == EventRecord(announced.run, "hi", approx(T0), "info")


# -- 6. Metrics from instruments ----------------------------------------------------------------


def test_one_metric_record_holds_every_instrument(meters) -> None:
    """Counters, up-down counters, gauges, histograms and observable gauges: one record."""
    meter = meters()
    counter = meter.meter.create_counter("requests")
    counter.add(3, {"method": "GET", "zone": "b"})
    counter.add(2, {"method": "POST", "zone": "b"})
    counter.add(1, {"zone": "a", "method": "GET"})
    queue = meter.meter.create_up_down_counter("queue")
    queue.add(5)
    queue.add(-2)
    gauge = meter.meter.create_gauge("temperature")
    gauge.set(20.0)
    gauge.set(21.5)
    latency = meter.meter.create_histogram("latency")
    for value in (1.0, 3.0, 5.0):
        latency.record(value)

    def observe(_options: CallbackOptions) -> list[Observation]:
        return [Observation(7, {"pool": "x"}), Observation(9, {"pool": "y"})]

    meter.meter.create_observable_gauge("workers", callbacks=[observe])

    records = Mapper().metrics(meter.collect())
    assert len(records) == 1
    (record,) = records
    assert record.run == KEYED_REF
    assert record.step == 0
    assert record.time == 0.0
    assert dict(record.values) == {
        "requests(method=GET zone=b)": 3,
        "requests(method=POST zone=b)": 2,
        "requests(method=GET zone=a)": 1,
        "queue": 3,
        "temperature": 21.5,
        "latency.count": 3,
        "latency.sum": 9.0,
        "latency.mean": 3.0,
        "latency.min": 1.0,
        "latency.max": 5.0,
        "workers(pool=x)": 7,
        "workers(pool=y)": 9,
    }


def test_second_collection_is_step_one(meters) -> None:
    """Each export is the next step; cumulative sums keep growing; time grows."""
    meter = meters()
    counter = meter.meter.create_counter("requests")
    counter.add(1)
    mapper = Mapper()
    (first,) = mapper.metrics(meter.collect())
    counter.add(4)
    (second,) = mapper.metrics(meter.collect())
    assert (first.step, first.values) == (0, {"requests": 1})
    assert (second.step, second.values) == (1, {"requests": 5})
    assert second.time == approx(second.timestamp - first.timestamp)
    assert second.time >= 0.0


def test_one_metric_record_per_run(meters) -> None:
    """Instruments of two runs in one export give one record for each run."""
    one, two = meters(), meters({cv.RUN_KEY: "other"})
    one.meter.create_counter("a").add(1)
    two.meter.create_counter("b").add(2)
    records = Mapper().metrics(one.collect() + two.collect())
    assert sorted((r.run.key, r.step, dict(r.values)) for r in records) == [
        ("other", 0, {"b": 2}),
        ("run-key-1", 0, {"a": 1}),
    ]


def test_disallowed_characters_in_attributes_are_sanitised(meters) -> None:
    """Runs of characters Simvue refuses in metric names become one '_'."""
    meter = meters()
    gauge = meter.meter.create_gauge("temp")
    gauge.set(1.0, {"room": "lab #1"})
    gauge.set(2.0, {"room": "café"})
    gauge.set(3.0, {"room": "a@@b", "host,id": "x"})
    (record,) = Mapper().metrics(meter.collect())
    assert set(record.values) == {
        "temp(room=lab _1)",
        "temp(room=caf_)",
        "temp(host_id=x room=a_b)",
    }
    assert record.values["temp(room=lab _1)"] == 1.0


def test_histogram_with_attributes_has_suffix_before_parts(meters) -> None:
    """A histogram's attribute suffix comes before .count/.sum/.mean/.min/.max."""
    meter = meters()
    latency = meter.meter.create_histogram("latency")
    latency.record(2.0, {"op": "read"})
    (record,) = Mapper().metrics(meter.collect())
    assert dict(record.values) == {
        "latency(op=read).count": 1,
        "latency(op=read).sum": 2.0,
        "latency(op=read).mean": 2.0,
        "latency(op=read).min": 2.0,
        "latency(op=read).max": 2.0,
    }


def test_foreign_metrics_announce_their_run_once(meters) -> None:
    """Instruments of a foreign service announce its run before the first metric record."""
    meter = meters(FOREIGN)
    meter.meter.create_counter("c").add(1)
    mapper = Mapper()
    first = mapper.metrics(meter.collect())
    second = mapper.metrics(meter.collect())
    assert [type(r) for r in first] == [RunRecord, MetricRecord]
    assert [type(r) for r in second] == [MetricRecord]
    assert first[1].run == first[0].run == second[0].run


# -- 7. End of process --------------------------------------------------------------------------


def test_finish_foreign_ends_runs_without_a_run_span(traces) -> None:
    """finish_foreign gives final records for foreign runs (keeping their announced state)
    and for keyed runs that sent data but no run span; a run with a root span is left alone,
    its own span decides its status."""
    mapper = Mapper(clock=lambda: T0 + 100)
    foreign = mapper.spans([ended_span(traces(FOREIGN), "work")])
    data_only = mapper.spans([ended_span(traces(), "work")])  # keyed, no simvue.run span
    own = traces({"simvue.run.key": "k-own", "simvue.run.name": "own"})
    mapper.spans([ended_span(own, "simvue.run")])
    announced = foreign[0]
    assert isinstance(announced, RunRecord)

    final, keyed = mapper.finish_foreign("completed")
    assert final.run == announced.run
    assert final.status == "completed"
    assert final.observed == T0 + 100
    assert final.ended == T0 + 100
    assert final.started == announced.started
    assert final.metadata == announced.metadata
    assert final.tags == ("otel",)
    assert isinstance(keyed, RunRecord) and keyed.run == data_only[0].run
    assert keyed.status == "completed" and keyed.ended == T0 + 100
    assert final.description == "Telemetry of checkout"


def test_finish_foreign_with_explicit_time_and_status(traces) -> None:
    """The status and time given are used; every foreign run seen is ended."""
    mapper = Mapper()
    mapper.spans([ended_span(traces(FOREIGN), "work")])
    mapper.spans([ended_span(traces({**FOREIGN, cv.SERVICE_INSTANCE_ID: "i2"}), "work")])
    finals = mapper.finish_foreign("failed", when=T0 + 9)
    assert len(finals) == 2
    assert len({f.run.key for f in finals}) == 2
    assert {(f.status, f.observed, f.ended) for f in finals} == {("failed", T0 + 9, T0 + 9)}


def test_finish_foreign_without_foreign_runs_is_empty(traces) -> None:
    """A mapper that saw only keyed runs ends nothing."""
    mapper = Mapper()
    mapper.spans([ended_span(traces(), cv.ROOT_SPAN)])
    assert mapper.finish_foreign() == []


# -- 8. Log levels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "level"),
    [
        (0, "info"),
        (None, "info"),
        (1, "debug"),
        (8, "debug"),
        (9, "info"),
        (12, "info"),
        (13, "warning"),
        (16, "warning"),
        (17, "error"),
        (20, "error"),
        (21, "critical"),
        (24, "critical"),
    ],
)
def test_log_level_for(severity: int | None, level: str) -> None:
    """OTel severity ranges map to Simvue's five log levels."""
    assert cv.log_level_for(severity) == level


# -- System and environment facts from the Resource ---------------------------------------------


def test_a_resource_with_host_name_fills_the_system_hostname_of_a_foreign_run(traces) -> None:
    """An OTel-only app whose SDK ran the host detector: its run's system says which host."""
    tracing = traces({**FOREIGN, "host.name": "node17", "host.arch": "x86_64", "os.type": "linux"})
    tracing.tracer.start_span("work", start_time=T0_NS).end(end_time=T0_NS + NS)
    announced = of_type(Mapper().spans(tracing.finished()), RunRecord)[0]
    assert announced.system == {
        "hostname": "node17",
        "platform": {"system": "Linux"},
        "cpu": {"arch": "x86_64"},
    }


def test_system_git_and_python_facts_become_the_official_fields(traces) -> None:
    resource = {
        **KEYED,
        "process.working_directory": "/home/ada/sim",
        "host.name": "node17",
        "process.runtime.version": "3.12.1",
        "os.type": "darwin",
        "os.version": "23.0.0",
        "os.description": "Darwin Kernel Version 23.0.0",
        "host.arch": "arm64",
        "host.cpu.model.name": "Apple M2",
        "simvue.system.gpu.name": "",
        "simvue.system.gpu.driver": "",
        "vcs.ref.head.revision": "abc123",
        "vcs.ref.head.name": "v2.0",
        "vcs.ref.head.type": "tag",
        "vcs.repository.url.full": "https://example.org/lab/sim.git",
        "simvue.git.message": "Faster solver",
        "simvue.git.time": "2026-01-02T03:04:05.000000",
        "simvue.git.authors": ("ada@example.org",),
        "simvue.git.dirty": False,
        "simvue.git.blame": "ada@example.org",
        "simvue.python.environment": '{"numpy": "2.1.0", "zope-interface": "7.0"}',
        "simvue.python.project.name": "sim",
        "simvue.python.project.version": "0.3",
        "simvue.shell": '{"OMP_NUM_THREADS": "8"}',
    }
    span = ended_span(traces(resource), cv.ROOT_SPAN, **{"simvue.run.metadata.git.ref": "mine"})
    (record,) = of_type(Mapper().spans([span]), RunRecord)
    assert record.system == {
        "cwd": "/home/ada/sim",
        "hostname": "node17",
        "pythonversion": "3.12.1",
        "platform": {"system": "Darwin", "release": "23.0.0",
                     "version": "Darwin Kernel Version 23.0.0"},
        "cpu": {"arch": "arm64", "processor": "Apple M2"},
        "gpu": {"name": "", "driver": ""},
    }  # fmt: skip
    assert record.metadata == {
        "git.ref": "mine",  # the user's own key wins over what the Resource says
        "git.url": "https://example.org/lab/sim.git",
        "git.msg": "Faster solver",
        "git.time_stamp": "2026-01-02T03:04:05.000000",
        "git.authors": ["ada@example.org"],
        "git.dirty": False,
        "git.blame": "ada@example.org",
        "python.environment.numpy": "2.1.0",
        "python.environment.zope-interface": "7.0",
        "python.project.name": "sim",
        "python.project.version": "0.3",
        "shell.OMP_NUM_THREADS": "8",
    }


def test_a_resource_that_says_nothing_of_its_system_states_none(traces) -> None:
    (record,) = of_type(Mapper().spans([ended_span(traces(), cv.ROOT_SPAN)]), RunRecord)
    assert record.system is None
    assert record.metadata == {}
