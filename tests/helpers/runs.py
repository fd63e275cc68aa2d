"""What the server holds of a run, read with our REST client."""

from __future__ import annotations

from typing import Any

from simvue_otel._internal.client import SimvueClient


def user_metadata(run: dict[str, Any]) -> dict[str, Any]:
    """A run's metadata less the run key simvue-otel adds and the facts every `Run` records
    without being asked (its Python packages; its git checkout when it runs in one: see
    tests/compat/test_system_parity.py)."""
    meta = dict(run["metadata"])
    assert meta.pop("simvue_otel_run_key", None), "the run key is missing"
    meta.pop("python", None)
    meta.pop("git", None)
    return meta


def newest_run(client: SimvueClient, name: str, folder: str | None = None) -> dict[str, Any] | None:
    """The most recently created visible run with this name (in ``folder``), or None."""
    found = client.find_runs_by_name(name, folder)
    return found[0] if found else None


def run_state(client: SimvueClient, key: str) -> dict[str, Any]:
    """Everything the server holds for the run with this key, minus ids and clock times."""
    found = client.find_run_by_key(key)
    assert found is not None, f"no run with key {key}"
    run = client.get_run(found["id"])
    metrics = client.get_metrics(found["id"])
    events = client.get_events(found["id"])
    return {
        "name": run["name"],
        "folder": run["folder"],
        "status": run["status"],
        "description": run["description"],
        "tags": sorted(run["tags"]),
        "metadata": run["metadata"],
        "visibility": run["visibility"],
        "ttl": run["ttl"],
        "metrics": {
            name: sorted((p["step"], p["value"], round(p["time"], 6)) for p in points)
            for name, points in metrics.items()
        },
        "events": sorted((e["message"], e["log_level"]) for e in events),
    }
