"""The official `simvue` client (PyPI), unchanged, against `simvue-otel server`.

A run is recorded by `simvue.Run` in a subprocess (as a user's script would), then read back
both with the official `simvue.Client` (another subprocess) and with our own REST client,
and every field is compared exactly with what was logged.
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from simvue_otel._internal.client import SimvueClient
from tests.helpers import newest_run, python_json

pytestmark = pytest.mark.compat

N_POINTS = 1000
N_EVENTS = 100

WRITER = textwrap.dedent(
    """
    import json, sys
    from simvue import Run

    spec = json.loads(sys.argv[1])
    with Run() as run:
        run.init(
            name=spec["name"],
            folder=spec["folder"],
            tags=spec["tags"],
            metadata=spec["metadata"],
            description=spec["description"],
            retention_period="1 hour",
        )
        run.update_tags(spec["more_tags"])
        run.update_metadata(spec["more_metadata"])
        for i in range(spec["points"]):
            run.log_metrics({"loss": 1.0 / (i + 1), "acc": i * 0.001}, step=i)
        for i in range(spec["events"]):
            run.log_event(f"event number {i}")
        print(json.dumps({"id": run.id}))
    """
)

READER = textwrap.dedent(
    """
    import json, sys
    from simvue import Client

    run_id, name = sys.argv[1], sys.argv[2]
    client = Client()
    run = client.get_run(run_id)
    values = client.get_metric_values(
        metric_names=["loss", "acc"], xaxis="step", run_ids=[run_id], output_format="dict"
    )
    points = {
        metric: {str(step): value for (step, _run), value in series.items()}
        for metric, series in values.items()
    }
    print(json.dumps({
        "id_from_name": client.get_run_id_from_name(name),
        "name": run.name,
        "folder": run.folder,
        "tags": sorted(run.tags),
        "metadata": run.metadata,
        "description": run.description,
        "status": run.status,
        "ttl": run.ttl,
        "metric_names": sorted(client.get_metrics_names(run_id)),
        "points": points,
        "events": [e["message"] for e in client.get_events(run_id)],
    }))
    """
)


def _official_env(server: Any, home: Path) -> dict[str, str]:
    """Environment of a user's shell: our server's URL and token, no stray simvue.toml."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMVUE_")}
    env.update(
        SIMVUE_URL=server.url,
        SIMVUE_TOKEN=server.token,
        HOME=str(home),
        SIMVUE_OFFLINE_DIRECTORY=str(home / "offline"),
        SIMVUE_DISABLE_ENVIRONMENT_METRICS="1",
        SIMVUE_DISABLE_GIT_METRICS="1",
    )
    return env


def test_official_run_reads_back_exactly(local_server: Any, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    spec = {
        "name": f"compat-run-{suffix}",
        "folder": f"/compat/{suffix}",
        "tags": ["alpha", "beta"],
        "more_tags": ["gamma"],
        "metadata": {"solver": "cg", "tolerance": 1e-8, "nested": {"depth": 3}},
        "more_metadata": {"solver": "gmres", "restarts": 30},
        "description": "A run made by the official simvue client",
        "points": N_POINTS,
        "events": N_EVENTS,
    }
    env = _official_env(local_server, tmp_path)
    run_id = python_json(WRITER, [json.dumps(spec)], env, tmp_path)["id"]
    official = python_json(READER, [run_id, spec["name"]], env, tmp_path)

    expected_metadata = {
        "solver": "gmres",  # update_metadata replaced it
        "tolerance": 1e-8,
        "nested": {"depth": 3},
        "restarts": 30,  # and added this, keeping the others
    }
    expected_loss = {str(i): 1.0 / (i + 1) for i in range(N_POINTS)}
    expected_acc = {str(i): i * 0.001 for i in range(N_POINTS)}
    expected_events = [f"event number {i}" for i in range(N_EVENTS)]

    # What the official client reads back.
    assert official["id_from_name"] == run_id
    assert official["name"] == spec["name"]
    assert official["folder"] == spec["folder"]
    assert official["tags"] == ["alpha", "beta", "gamma"]
    assert {k: official["metadata"][k] for k in expected_metadata} == expected_metadata
    assert official["description"] == spec["description"]
    assert official["status"] == "completed"
    assert official["ttl"] == 3600
    assert official["metric_names"] == ["acc", "loss"]
    assert official["points"]["loss"] == expected_loss
    assert official["points"]["acc"] == expected_acc
    assert official["events"] == expected_events

    # What our REST client reads back: the same.
    with SimvueClient(local_server.url, local_server.token) as ours:
        run = ours.get_run(run_id)
        assert run["name"] == spec["name"]
        assert run["folder"] == spec["folder"]
        assert sorted(run["tags"]) == ["alpha", "beta", "gamma"]
        assert run["metadata"] == official["metadata"]
        assert run["description"] == spec["description"]
        assert run["status"] == "completed"
        assert run["ttl"] == 3600
        assert run["endtime"] is not None
        assert run["metrics"]["loss"]["count"] == N_POINTS
        assert newest_run(ours, spec["name"])["id"] == run_id  # type: ignore[index]
        metrics = ours.get_metrics(run_id, ["loss", "acc"])
        assert [p["step"] for p in metrics["loss"]] == list(range(N_POINTS))
        assert {str(p["step"]): p["value"] for p in metrics["loss"]} == expected_loss
        assert {str(p["step"]): p["value"] for p in metrics["acc"]} == expected_acc
        assert all(p["timestamp"] and p["time"] is not None for p in metrics["loss"])
        events = ours.get_events(run_id)
        assert [e["message"] for e in events] == expected_events
        assert all(e["log_level"] == "info" and e["timestamp"] for e in events)
