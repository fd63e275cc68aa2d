"""Queued run: register a run now, start it later from another process.

What it shows: ``init(..., running=False)`` records a run as ``created`` (queued) with its
tags, metadata and description; later, any process can ``reconnect`` to it by name, which
turns it ``running``, record into it, and end it ``completed``. A typical use: a submit script
registers the run, the batch job started by the scheduler fills it in.

Run it against a Simvue server::

    export SIMVUE_URL=http://127.0.0.1:8765 SIMVUE_TOKEN=...
    python examples/queued_run.py create my-job-42   # the run shows as "created"
    python examples/queued_run.py start my-job-42    # now "running", then "completed"

Optional: ``EXAMPLE_FOLDER`` picks the Simvue folder of a new run (default
``/examples/queued``).
"""

from __future__ import annotations

import argparse
import os

from simvue_otel import Run

FOLDER = os.environ.get("EXAMPLE_FOLDER", "/examples/queued")


def create(name: str) -> None:
    """Register the run without starting it."""
    with Run() as run:
        run.init(
            name=name,
            folder=FOLDER,
            running=False,  # queued: status "created"
            tags=["queued"],
            metadata={"cells": 1000},
            description="registered by the submit step, filled in by the job",
        )
        # Leaving the block keeps a queued run queued: it is not ended.
        print(f"queued {run.name} ({run.status})")


def start(name: str) -> None:
    """Pick the queued run up by name and record into it."""
    with Run() as run:
        run.reconnect(name)  # the run turns "running"; its tags and metadata stay as they were
        residual = 1.0
        for _ in range(10):
            residual *= 0.5
            run.log_metrics({"residual": residual})
        run.log_event("job finished")
        print(f"finished {run.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["create", "start"])
    parser.add_argument("name", help="the run's name")
    args = parser.parse_args()
    if args.action == "create":
        create(args.name)
    else:
        start(args.name)


if __name__ == "__main__":
    main()
