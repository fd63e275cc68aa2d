"""Parameter scan: several runs in one program, one per parameter value.

What it shows: each ``with Run()`` block is a run of its own (its own name, metadata and
metrics), so the runs of a scan never mix even though they share one process. Each run ends
``completed`` when its block ends; the next one starts fresh.

Run it against a Simvue server::

    export SIMVUE_URL=http://127.0.0.1:8765 SIMVUE_TOKEN=...
    python examples/parameter_scan.py

It prints the name of each run. Optional: ``EXAMPLE_FOLDER`` picks the Simvue folder
(default ``/examples/scan``).
"""

from __future__ import annotations

import os

from simvue_otel import Run

FOLDER = os.environ.get("EXAMPLE_FOLDER", "/examples/scan")
LEARNING_RATES = [0.05, 0.1, 0.2]
STEPS = 20


def minimise(run: Run, rate: float) -> float:
    """Gradient descent on f(x) = (x - 3)^2, logging the loss at each step."""
    x = 0.0
    for _ in range(STEPS):
        x -= rate * 2.0 * (x - 3.0)
        run.log_metrics({"loss": (x - 3.0) ** 2, "x": x})
    return x


def main() -> None:
    for rate in LEARNING_RATES:
        with Run() as run:
            run.init(
                name=f"scan-rate-{rate}",
                folder=FOLDER,
                tags=["scan"],
                metadata={"learning_rate": rate, "steps": STEPS},
                # Short runs: skip CPU/memory sampling to keep the scan light.
                resources_metrics_interval=None,
            )
            x = minimise(run, rate)
            run.log_event(f"rate {rate}: x = {x:.6f}")
            print(run.name)


if __name__ == "__main__":
    main()
