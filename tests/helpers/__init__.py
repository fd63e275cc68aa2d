"""Helpers the tests share: servers and bridges started as subprocesses, free ports, an
in-process OTel app, reading a run back, waiting for it, fresh virtual environments. Tests
import them from here; the conftest.py files hold only fixtures, built on these. The helpers of
one family of tests live in a module of their own, imported from it: ``bridges`` (a bridge's
backlog drained, a run's state compared), ``otlp`` (the official exporters, raw OTLP requests)
and ``cli`` (`simvue-otel send`, a program's environment)."""

from __future__ import annotations

from tests.helpers.apps import ROOT_ATTRS, App, make_app, run_program
from tests.helpers.polling import poll
from tests.helpers.ports import free_port
from tests.helpers.processes import cpu_seconds, in_foreground, python_json
from tests.helpers.runs import newest_run, run_state, user_metadata
from tests.helpers.servers import (
    SERVER_CMD,
    Bridge,
    LocalServer,
    start_bridge,
    start_server,
    stop_server,
    token_from_output,
    wait_healthy,
)
from tests.helpers.venvs import make_venv

__all__ = [
    "ROOT_ATTRS",
    "SERVER_CMD",
    "App",
    "Bridge",
    "LocalServer",
    "cpu_seconds",
    "free_port",
    "in_foreground",
    "make_app",
    "make_venv",
    "newest_run",
    "poll",
    "python_json",
    "run_program",
    "run_state",
    "start_bridge",
    "start_server",
    "stop_server",
    "token_from_output",
    "user_metadata",
    "wait_healthy",
]
