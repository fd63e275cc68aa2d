"""Quickstart: track a small simulation as a Simvue run.

What it shows: ``with Run() as run: run.init(...)`` with a name, folder, tags, metadata and a
description; metrics logged at every step; an event; tags and metadata added while the run
goes. Leaving the ``with`` block ends the run ``completed`` (``failed`` if an exception
escapes it, ``terminated`` on Ctrl-C or SIGTERM).

Run it against a Simvue server (``simvue-otel server`` prints the two values to export)::

    export SIMVUE_URL=http://127.0.0.1:8765 SIMVUE_TOKEN=...
    python examples/quickstart.py

Optional: ``EXAMPLE_FOLDER`` picks the Simvue folder (default ``/examples``).
"""

from __future__ import annotations

import math
import os

from simvue_otel import Run

FOLDER = os.environ.get("EXAMPLE_FOLDER", "/examples")
STEPS = 50


def main() -> None:
    # Run() reads SIMVUE_URL and SIMVUE_TOKEN (or simvue.toml); nothing is hard-coded here.
    with Run() as run:
        run.init(
            name="quickstart-cooling",
            folder=FOLDER,
            tags=["quickstart", "cooling"],
            metadata={"model": {"k": 0.1, "ambient": 20.0}, "steps": STEPS},
            description="Newton's law of cooling, integrated with explicit Euler steps",
        )
        print(f"run {run.name} in {run.folder}")

        # A tiny "simulation": a body cooling towards the ambient temperature.
        k, ambient, dt = 0.1, 20.0, 0.5
        temperature = 90.0
        for step in range(STEPS):
            temperature += -k * (temperature - ambient) * dt
            exact = ambient + 70.0 * math.exp(-k * dt * (step + 1))
            # One call per step: several metrics at once, step counted from 0 automatically.
            run.log_metrics({"temperature": temperature, "error": abs(temperature - exact)})

        # Events are timestamped messages with a level.
        run.log_event(f"reached {temperature:.2f} degrees after {STEPS} steps")

        # Tags and metadata can change while the run goes: they show on the server at once.
        run.update_tags(["converged"])
        run.update_metadata({"result": {"final_temperature": round(temperature, 3)}})


if __name__ == "__main__":
    main()
