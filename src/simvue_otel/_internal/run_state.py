"""The run's state, field by field: one table that every place holding a run's state reads.

A run's state (its description, tags, metadata, visibility, retention, heartbeat timeout and
system facts) is held by the ``Run``, written on its root span and snapshots as OTel
attributes, kept in the offline registry, read back from a server for ``reconnect``, carried
by :class:`~.mapping.records.RunRecord`, stored in the spool by the codec, and diffed and sent
by the uploader. :data:`RUN_STATE` says, once per field, how each of them does it; the helpers
below are those places' views of the table. A new run field is one row here (plus a field of
``RunRecord``, checked against the table at import) and its own logic.

Rows are in the order the spool stores them (``sink/codec.py``): never reorder them, and add
a new field only as an optional trailing item of the spool format (as ``system`` is).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import conventions as cv
from .flatten import leaves

__all__ = [
    "RUN_STATE",
    "RUN_STATE_NAMES",
    "StateField",
    "check_record_fields",
    "created_fields",
    "initial_state",
    "plain",
    "registry_entry",
    "state_attributes",
    "state_from_registry",
    "state_from_server",
    "stated_fields",
]

RunState = dict[str, Any]
"""A ``Run``'s state: table field name -> value (the fields with :attr:`StateField.in_run`)."""


def plain(value: Any) -> Any:
    """A copy of a value as JSON holds it: sequences as lists, mappings as dicts."""
    if isinstance(value, tuple | list):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def _same(value: Any) -> Any:
    return value


def _attribute(name: str) -> Callable[[Any], dict[str, Any]]:
    """The OTel attribute ``name`` holding the value, when the run has one."""
    return lambda value: {} if value is None else {name: value}


def _visibility_attributes(value: Any) -> dict[str, Any]:
    """A Run's visibility (a level, a list of users, or None) as the root span states it."""
    if isinstance(value, list):
        return {cv.RUN_VISIBILITY: "private", cv.RUN_VISIBILITY_USERS: value}
    return {cv.RUN_VISIBILITY: value or "private"}


def _visibility_from_server(doc: Mapping[str, Any]) -> str | list[str] | None:
    """Simvue's visibility ``{"public", "tenant", "users"}`` as a Run holds it."""
    shared = doc.get("visibility") or {}
    if shared.get("public"):
        return "public"
    if shared.get("tenant"):
        return "tenant"
    if shared.get("users"):
        return [str(u) for u in shared["users"]]
    return None


def _seconds_from_server(name: str) -> Callable[[Mapping[str, Any]], int | None]:
    def read(doc: Mapping[str, Any]) -> int | None:
        value = doc.get(name)
        return int(value) if isinstance(value, int | float) else None

    return read


def _metadata_from_server(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The server's run metadata as a Run's state: metadata leaves that a run can state
    (numbers, strings, booleans) are kept; others stay on the server untouched."""
    metadata = doc.get("metadata")
    return {
        k: v
        for _keys, k, v in (leaves(metadata) if isinstance(metadata, Mapping) else ())
        if isinstance(v, bool | int | float | str) and k != cv.RUN_KEY_METADATA
    }


@dataclass(frozen=True)
class StateField:
    """One field of a run's state, and how each place that holds it treats it."""

    name: str
    """The field's name: the ``RunRecord`` attribute, the offline registry key and Simvue's
    run field (REST body and document) alike."""
    type: str
    """The value's type in a ``RunRecord`` (for readers; the codec checks ``spool``)."""
    attribute: str | None
    """The OTel attribute (or prefix) stating it on the root span and its snapshots; None:
    not a ``Run`` attribute (taken from the Resource)."""
    spool: Literal["str?", "strs?", "map", "map?", "int?"]
    """How the codec checks the stored value: text, a list of text (a tuple in the record), a
    map, an integer; ``?``: or nil."""
    diff: Literal["value", "merge"] = "value"
    """How the uploader compares it with what the server has: the whole value (PUT when it
    differs), or key by key (``merge``: only changed keys are PUT, the rest kept)."""
    trailing: bool = False
    """Stored after ``started`` and ``ended`` in the spool, only when it (or a trailing field
    after it) is stated: a blob written before the field existed still decodes."""
    default: Any = None
    """A ``Run``'s value before ``init`` states it (through :attr:`from_json`)."""
    from_json: Callable[[Any], Any] = _same
    """A ``Run``'s value from its JSON form (the offline registry)."""
    to_attributes: Callable[[Any], dict[str, Any]] | None = None
    """A ``Run``'s value as OTel attributes; None: :attr:`attribute` holds it when not None."""
    from_server: Callable[[Mapping[str, Any]], Any] | None = None
    """A ``Run``'s value from the server's run document (``reconnect``); None: the field as is."""
    stated: Callable[[Any], Any] = plain
    """A record's value as the uploader sends it; None: not stated (left as the run has it)."""
    created: Callable[[Any], Any] = plain
    """A record's value (None: no record) as a new run is created with it."""

    @property
    def in_run(self) -> bool:
        """Whether a ``Run`` holds it (else it comes from the Resource)."""
        return self.attribute is not None

    def attributes(self, value: Any) -> dict[str, Any]:
        if self.to_attributes is not None:
            return self.to_attributes(value)
        assert self.attribute is not None
        return _attribute(self.attribute)(value)

    def read_server(self, doc: Mapping[str, Any]) -> Any:
        if self.from_server is not None:
            return self.from_server(doc)
        return doc.get(self.name)


RUN_STATE: tuple[StateField, ...] = (
    StateField("description", "str | None", cv.RUN_DESCRIPTION, "str?"),
    StateField(
        "tags", "tuple[str, ...] | None", cv.RUN_TAGS, "strs?",
        from_json=lambda v: tuple(v or ()),
        to_attributes=lambda v: {cv.RUN_TAGS: list(v)},  # stated even when empty
        from_server=lambda doc: tuple(str(t) for t in doc.get("tags") or ()),
        created=lambda v: [] if v is None else list(v),
    ),
    StateField(
        "metadata", "Mapping[str, Any]", cv.RUN_METADATA_PREFIX, "map", diff="merge",
        from_json=lambda v: dict(v or {}),
        to_attributes=lambda v: {cv.RUN_METADATA_PREFIX + k: x for k, x in v.items()},
        from_server=_metadata_from_server,
        stated=lambda v: dict(v) if v else None,
    ),
    StateField(
        "visibility", "Mapping[str, Any] | None", cv.RUN_VISIBILITY, "map?",
        to_attributes=_visibility_attributes,
        from_server=_visibility_from_server,
        created=lambda v: {"public": False, "tenant": False, "users": []} if v is None else dict(v),
    ),
    StateField(
        "ttl", "int | None", cv.RUN_RETENTION, "int?",
        from_server=_seconds_from_server("ttl"),
    ),
    StateField(
        "heartbeat_timeout", "int | None", cv.RUN_HEARTBEAT_TIMEOUT, "int?", default=180,
        from_server=_seconds_from_server("heartbeat_timeout"),
    ),
    StateField(
        "system", "Mapping[str, Any] | None", None, "map", trailing=True,
        created=lambda v: dict(v) if v else None,
    ),
)  # fmt: skip
"""The fields of a run's state, in the spool's order (see the module docstring)."""

RUN_STATE_NAMES: tuple[str, ...] = tuple(f.name for f in RUN_STATE)
_IN_RUN = tuple(f for f in RUN_STATE if f.in_run)


def check_record_fields(names: tuple[str, ...]) -> None:
    """Fail at import when ``RunRecord``'s state fields (``names``, in order) and the table
    disagree: the codec and the uploader read a record by the table's names."""
    if names != RUN_STATE_NAMES:
        raise TypeError(f"RunRecord's state fields {names} differ from RUN_STATE's")


# -- The Run's views --------------------------------------------------------------------------


def initial_state() -> RunState:
    """A ``Run``'s state before ``init``: every field at its default."""
    return {f.name: f.from_json(f.default) for f in _IN_RUN}


def state_attributes(state: RunState, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The root span's and snapshots' attributes stating ``state`` (with only ``metadata``'s
    keys, when given: the keys an update changed)."""
    attrs: dict[str, Any] = {}
    for f in _IN_RUN:
        value = metadata if f.name == "metadata" and metadata is not None else state[f.name]
        attrs.update(f.attributes(value))
    return attrs


def registry_entry(state: RunState) -> dict[str, Any]:
    """``state`` as the offline registry stores it (JSON)."""
    return {f.name: plain(state[f.name]) for f in _IN_RUN}


def state_from_registry(entry: Mapping[str, Any]) -> RunState:
    """A ``Run``'s state from its offline registry entry (a missing field: its default)."""
    return {f.name: f.from_json(entry.get(f.name, f.default)) for f in _IN_RUN}


def state_from_server(doc: Mapping[str, Any]) -> RunState:
    """A ``Run``'s state from the server's run document."""
    return {f.name: f.read_server(doc) for f in _IN_RUN}


# -- The uploader's views ---------------------------------------------------------------------


def stated_fields(record: Any) -> dict[str, Any]:
    """The fields a ``RunRecord`` states, as sent (None = not stated, left as the run has it)."""
    fields = {f.name: f.stated(getattr(record, f.name)) for f in RUN_STATE}
    return {k: v for k, v in fields.items() if v is not None}


def created_fields(record: Any) -> dict[str, Any]:
    """The fields (``metadata`` aside) a run is created with from a ``RunRecord`` (or None)."""
    return {
        f.name: f.created(None if record is None else getattr(record, f.name))
        for f in RUN_STATE
        if f.diff != "merge"
    }
