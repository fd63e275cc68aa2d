"""Unit tests of the shared validation rules: what each accepts, returns and refuses."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from simvue_otel._internal.errors import SimvueValidationError
from simvue_otel._internal.validation import (
    check_metadata_size,
    clean_text,
    parse_retention,
    validate_folder,
    validate_interval,
    validate_log_level,
    validate_metadata,
    validate_metric_name,
    validate_name,
    validate_status,
    validate_step,
    validate_tags,
    validate_text,
    validate_timeout,
    validate_visibility,
)

_SAME = object()


def assert_rejected(
    func: Callable[..., Any],
    value: Any,
    expected_field: str,
    given: Any = _SAME,
    **kwargs: Any,
) -> SimvueValidationError:
    """Call ``func(value, **kwargs)``; check the error names the field and shows ``given``.

    ``given`` is the offending value the error should carry (``value`` itself by default).
    """
    shown = value if given is _SAME else given
    with pytest.raises(SimvueValidationError) as info:
        func(value, **kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.field == expected_field
    if isinstance(shown, float) and math.isnan(shown):
        assert math.isnan(err.value)
    else:
        assert err.value == shown
        assert type(err.value) is type(shown)
    message = str(err)
    assert message.startswith(f"invalid {expected_field}: ")
    assert repr(shown)[:150] in message
    assert err.rule
    assert err.rule in message
    return err


# --- validate_name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["run", "my-run_1.2", "A", "x" * 255, "a.b", "..a", "_", "-", "2024.01.01",
     "my run", "a:b", "step/1", "tab\t", ".", "..."],
)  # fmt: skip
def test_name_accepted(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 256, "ümlaut", "a#b", "50%", "a,b", "(x)", None, 3, b"run"],
)
def test_name_rejected(name: Any) -> None:
    assert_rejected(validate_name, name, "name")


def test_name_custom_field() -> None:
    assert_rejected(validate_name, "bad#name", "alert.name", field="alert.name")


# --- validate_folder -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("/a", "/a"),
        ("/a/", "/a"),
        ("/a/b-c/d_e.f", "/a/b-c/d_e.f"),
        ("/sims/2024/", "/sims/2024"),
        ("/a/...", "/a/..."),
        ("/.hidden", "/.hidden"),
        ("/my sims/run #1/", "/my sims/run #1"),  # the official client's rule: any path
        ("/" + "a" * 1023, "/" + "a" * 1023),
    ],
)
def test_folder_accepted(path: str, expected: str) -> None:
    assert validate_folder(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        "a/b",
        "//",
        "/a//b",
        "/a//",
        "/a/./b",
        "/a/../b",
        "/..",
        "/.",
        "/a/b\n",
        "/a\tb",
        "/" + "a" * 1024,
        None,
        42,
        ["/a"],
    ],
)
def test_folder_rejected(path: Any) -> None:
    assert_rejected(validate_folder, path, "folder")


# --- validate_tags -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ([], ()),
        (["a", "b"], ("a", "b")),
        (("b", "a", "b", "c", "a"), ("b", "a", "c")),
        ({"only"}, ("only",)),
        (frozenset({"x"}), ("x",)),
        (["with space", "ü", "t" * 255], ("with space", "ü", "t" * 255)),
    ],
)
def test_tags_accepted(tags: Any, expected: tuple[str, ...]) -> None:
    assert validate_tags(tags) == expected


@pytest.mark.parametrize("tags", ["a,b", "tag", None, 5, {"a": 1}, b"ab"])
def test_tags_container_rejected(tags: Any) -> None:
    assert_rejected(validate_tags, tags, "tags")


@pytest.mark.parametrize(
    ("tags", "field", "bad"),
    [
        (["ok", "ok2", ""], "tags[2]", ""),
        (["a:b"], "tags[0]", "a:b"),
        (["ok", "x/y"], "tags[1]", "x/y"),
        (["x" * 256], "tags[0]", "x" * 256),
        (["a", 1], "tags[1]", 1),
        ([None], "tags[0]", None),
    ],
)
def test_tags_item_rejected(tags: list[Any], field: str, bad: Any) -> None:
    assert_rejected(validate_tags, tags, field, given=bad)


# --- validate_metadata ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({}, {}),
        ({"a": 1, "b": 2.5, "c": "x", "d": True}, {"a": 1, "b": 2.5, "c": "x", "d": True}),
        ({"solver": {"tol": 1e-6}}, {"solver.tol": 1e-6}),
        (
            {"solver": {"tol": 1e-6, "opts": {"n": 3}}, "name": "cg"},
            {"solver.tol": 1e-6, "solver.opts.n": 3, "name": "cg"},
        ),
        ({"a.b": 1, "a": {"c": 2}}, {"a.b": 1, "a.c": 2}),
        ({"empty": {}}, {}),
        (MappingProxyType({"k": "v"}), {"k": "v"}),
        ({"big": math.inf, "small": -math.inf}, {"big": math.inf, "small": -math.inf}),
    ],
)
def test_metadata_accepted(metadata: Any, expected: dict[str, Any]) -> None:
    result = validate_metadata(metadata)
    assert result == expected
    assert list(result) == list(expected)
    assert all(type(result[k]) is type(expected[k]) for k in expected)


def test_metadata_nan_allowed() -> None:
    result = validate_metadata({"x": {"y": math.nan}})
    assert list(result) == ["x.y"]
    assert math.isnan(result["x.y"])


@pytest.mark.parametrize("metadata", [None, [("a", 1)], "a=1", 3])
def test_metadata_container_rejected(metadata: Any) -> None:
    assert_rejected(validate_metadata, metadata, "metadata")


@pytest.mark.parametrize(
    ("metadata", "field", "bad"),
    [
        ({"solver": {"tol": None}}, "metadata.solver.tol", None),
        ({"a": [1, 2]}, "metadata.a", [1, 2]),
        ({"a": {"b": {"c": (1,)}}}, "metadata.a.b.c", (1,)),
        ({"a": b"bytes"}, "metadata.a", b"bytes"),
        ({"a": 1j}, "metadata.a", 1j),
        ({"a.b": 1, "a": {"b": 2}}, "metadata.a.b", 2),
        ({"a": {"b": 2}, "a.b": 1}, "metadata.a.b", 1),
        ({1: "x"}, "metadata", 1),
        ({"": "x"}, "metadata", ""),
        ({" lead": "x"}, "metadata", " lead"),
        ({"trail ": "x"}, "metadata", "trail "),
        ({"a..b": "x"}, "metadata", "a..b"),
        ({"solver": {"": 1}}, "metadata.solver", ""),
        ({"a.": {"b": 1}}, "metadata.a..b", "a..b"),
    ],
)
def test_metadata_entry_rejected(metadata: dict[Any, Any], field: str, bad: Any) -> None:
    assert_rejected(validate_metadata, metadata, field, given=bad)


# --- parse_retention -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (1, 1),
        (3600, 3600),
        ("30 min", 1800),
        ("30 mins", 1800),
        ("30 minutes", 1800),
        ("1 minute", 60),
        ("5m", 300),
        ("1 hour", 3600),
        ("2 hours", 7200),
        ("2 hrs", 7200),
        ("1h", 3600),
        ("1.5 hours", 5400),
        ("5 days", 432000),
        ("3d", 259200),
        ("1 week", 604800),
        ("2 weeks", 1209600),
        ("2w", 1209600),
        ("45 seconds", 45),
        ("45 sec", 45),
        ("45 secs", 45),
        ("10s", 10),
        ("1 Hour", 3600),
        ("2 WEEKS", 1209600),
        ("  3 days  ", 259200),
        ("1 hour 30 min", 5400),
        ("1h30m", 5400),
        ("1 day 2 hours 3 minutes 4 seconds", 93784),
        ("1.4s", 1),
        ("2.6 s", 3),
        (".5 h", 1800),
    ],
)
def test_retention_accepted(value: Any, expected: int | None) -> None:
    assert parse_retention(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        0,
        -5,
        True,
        False,
        1.5,
        "",
        "   ",
        "0 s",
        "0.2 s",
        "-1 hour",
        "forever",
        "30",
        "hour",
        "5 months",
        "5 years",
        "1 hour and 30 min",
        "1,5 hours",
        [1],
    ],
)
def test_retention_rejected(value: Any) -> None:
    err = assert_rejected(parse_retention, value, "retention_period")
    assert "30 min" in err.rule and "week" in err.rule


# --- validate_visibility -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("private", None),
        ("tenant", {"public": False, "tenant": True, "users": []}),
        ("public", {"public": True, "tenant": False, "users": []}),
        (["alice"], {"public": False, "tenant": False, "users": ["alice"]}),
        (("alice", "bob"), {"public": False, "tenant": False, "users": ["alice", "bob"]}),
    ],
)
def test_visibility_accepted(value: Any, expected: dict[str, Any] | None) -> None:
    assert validate_visibility(value) == expected


@pytest.mark.parametrize("value", ["everyone", "Public", "", [], (), True, 1, {"users": ["a"]}])
def test_visibility_rejected(value: Any) -> None:
    assert_rejected(validate_visibility, value, "visibility")


@pytest.mark.parametrize(
    ("value", "field", "bad"),
    [
        (["alice", 3], "visibility[1]", 3),
        ([""], "visibility[0]", ""),
        (["a", None], "visibility[1]", None),
    ],
)
def test_visibility_user_rejected(value: Any, field: str, bad: Any) -> None:
    assert_rejected(validate_visibility, value, field, given=bad)


# --- validate_interval ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), (1, 1.0), (0.5, 0.5), (30, 30.0), (1e-3, 1e-3)]
)
def test_interval_accepted(value: Any, expected: float | None) -> None:
    result = validate_interval(value)
    assert result == expected
    if expected is not None:
        assert type(result) is float


@pytest.mark.parametrize("value", [0, 0.0, -1, math.inf, -math.inf, math.nan, True, "5", [1]])
def test_interval_rejected(value: Any) -> None:
    assert_rejected(validate_interval, value, "resources_metrics_interval")


# --- validate_metric_name -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "loss",
        "train/loss",
        "a b",
        "x.y",
        "lr:0",
        "a=b",
        "a>b<c",
        "a+b",
        "f(x)",
        "x" * 255,
        "_-",
        "gpu (%)",
    ],
)
def test_metric_name_accepted(name: str) -> None:
    assert validate_metric_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 256, "a,b", "a#b", "ü", "a*b", None, 7])
def test_metric_name_rejected(name: Any) -> None:
    assert_rejected(validate_metric_name, name, "metrics")


# --- validate_step / validate_status / validate_log_level ----------------------------------


@pytest.mark.parametrize("step", [0, 1, 10**12])
def test_step_accepted(step: int) -> None:
    result = validate_step(step)
    assert result == step
    assert type(result) is int


@pytest.mark.parametrize("step", [-1, True, False, 1.0, "1", None])
def test_step_rejected(step: Any) -> None:
    assert_rejected(validate_step, step, "step")


@pytest.mark.parametrize("status", ["created", "running", "completed", "failed", "terminated"])
def test_status_accepted(status: str) -> None:
    assert validate_status(status) == status


@pytest.mark.parametrize("status", ["Running", "lost", "", None, 1])
def test_status_rejected(status: Any) -> None:
    err = assert_rejected(validate_status, status, "status")
    assert "terminated" in err.rule


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error", "critical"])
def test_log_level_accepted(level: str) -> None:
    assert validate_log_level(level) == level


@pytest.mark.parametrize("level", ["warn", "INFO", "fatal", "", None, 10])
def test_log_level_rejected(level: Any) -> None:
    err = assert_rejected(validate_log_level, level, "level")
    assert "critical" in err.rule


def test_long_value_is_truncated_in_message() -> None:
    err = assert_rejected(validate_name, "x" * 300, "name")
    assert str(err).endswith("...)")


# --- bounds a server is sure to accept (issue: a refused run blocked every other) ---------


@pytest.mark.parametrize("value", [2**62, 2**31, "100 years", "99999999 weeks", "9" * 400 + " s"])
def test_retention_past_the_bound_is_refused_naming_it(value: Any) -> None:
    err = assert_rejected(parse_retention, value, "retention_period")
    assert "2147483647" in err.rule


def test_retention_at_the_bound_is_accepted() -> None:
    assert parse_retention(2**31 - 1) == 2**31 - 1
    assert parse_retention("3550 weeks") == 3550 * 604800


@pytest.mark.parametrize("value", [0, -1, 2**31, 2**62, True, 1.5, "180"])
def test_heartbeat_timeout_out_of_bounds_is_refused(value: Any) -> None:
    assert_rejected(validate_timeout, value, "timeout")


def test_heartbeat_timeout_in_bounds() -> None:
    assert validate_timeout(None) is None
    assert validate_timeout(1) == 1
    assert validate_timeout(2**31 - 1) == 2**31 - 1


def _nested(depth: int) -> dict[str, Any]:
    tree: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        tree = {"a": tree}
    return tree


def test_metadata_nested_deeper_than_the_bound_is_refused_naming_the_key() -> None:
    assert validate_metadata(_nested(32)) == {"a." * 31 + "leaf": 1}
    with pytest.raises(SimvueValidationError) as info:
        validate_metadata(_nested(33))
    assert info.value.field == "metadata" and "32 levels" in info.value.rule
    assert info.value.value == "a." * 32 + "leaf"
    with pytest.raises(SimvueValidationError):  # dots in a key count as levels
        validate_metadata({".".join(["k"] * 33): 1})


def test_metadata_nested_thousands_deep_is_refused_without_recursing_through_it() -> None:
    with pytest.raises(SimvueValidationError):
        validate_metadata(_nested(100_000))


def test_metadata_larger_than_the_bound_is_refused_with_its_size() -> None:
    validate_metadata({"blob": "x" * (2**20 - 100)})
    with pytest.raises(SimvueValidationError) as info:
        validate_metadata({"blob": "x" * 2**20})
    assert info.value.field == "metadata" and "1048576 bytes" in info.value.rule
    assert "bytes" in str(info.value.value)
    with pytest.raises(SimvueValidationError):  # many small keys add up too
        validate_metadata({f"k{i}": "y" * 100 for i in range(20_000)})
    with pytest.raises(SimvueValidationError):
        check_metadata_size({f"k{i}": "y" * 100 for i in range(20_000)})


@pytest.mark.parametrize(
    ("func", "value", "field"),
    [
        (validate_name, "a" * 256, "name"),
        (validate_metric_name, "m" * 256, "metrics"),
        (validate_tags, ["t" * 256], "tags[0]"),
    ],
)
def test_names_longer_than_255_are_refused(
    func: Callable[..., Any], value: Any, field: str
) -> None:
    with pytest.raises(SimvueValidationError) as info:
        func(value)
    assert info.value.field == field and "255" in info.value.rule


# --- text that is not Unicode (os.fsdecode of a non-UTF-8 file name) ----------------------

CAFE = os.fsdecode(b"caf\xe9")  # "caf\udce9"


def test_clean_text_replaces_each_lone_surrogate_with_u_fffd_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert CAFE == "caf\udce9"
    with caplog.at_level(logging.WARNING, logger="simvue_otel"):
        assert clean_text(CAFE, "metadata.unique-field") == "caf\ufffd"
        assert clean_text("\ud800x\udfff", "metadata.unique-field") == "\ufffdx\ufffd"
    assert [r.getMessage() for r in caplog.records if "unique-field" in r.getMessage()] == [
        "metadata.unique-field holds characters that are not Unicode text (bytes of another "
        "encoding, as file names on some file systems give): each was replaced with U+FFFD"
    ]
    plain = "déjà vu ✓"
    assert clean_text(plain) is plain


def test_metadata_keys_and_values_holding_surrogates_are_replaced() -> None:
    got = validate_metadata({"input": {"file": CAFE}, CAFE: 1})
    assert got == {"input.file": "caf\ufffd", "caf\ufffd": 1}
    for text in got:
        text.encode("utf-8")


def test_free_text_folder_and_users_holding_surrogates_are_replaced() -> None:
    assert validate_text(CAFE, "description") == "caf\ufffd"
    assert validate_folder(f"/data/{CAFE}/") == "/data/caf\ufffd"
    assert validate_visibility([CAFE]) == {"public": False, "tenant": False, "users": ["caf\ufffd"]}
    assert_rejected(validate_text, 3, "message", field="message")


@pytest.mark.parametrize(
    ("func", "value", "field"),
    [
        (validate_name, CAFE, "name"),
        (validate_metric_name, CAFE, "metrics"),
        (validate_tags, [CAFE], "tags[0]"),
    ],
)
def test_names_with_a_pattern_refuse_surrogates_at_the_call(
    func: Callable[..., Any], value: Any, field: str
) -> None:
    with pytest.raises(SimvueValidationError) as info:
        func(value)
    assert info.value.field == field and "\\udce9" in str(info.value)
