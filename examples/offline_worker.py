"""Offline run on a worker node with no network, uploaded later with ``simvue-otel send``.

What it shows: ``Run(mode="offline")`` needs no server, URL or token. Everything the run
records is kept in a spool under the offline directory. From any machine that can reach the
server and sees that directory, ``simvue-otel send --cache DIR`` uploads it; it is safe to
interrupt and to run again (nothing is stored twice). This example names its offline
directory itself (``SIMVUE_OFFLINE_DIRECTORY``, else ``~/.simvue``) and passes it to ``Run``,
so that the upload command it prints at the end names the very directory the run is in.

On the worker node::

    export SIMVUE_OFFLINE_DIRECTORY=/scratch/simvue
    python examples/offline_worker.py

Then, where the server can be reached::

    export SIMVUE_URL=http://127.0.0.1:8765 SIMVUE_TOKEN=...
    simvue-otel send --cache /scratch/simvue

Optional: ``EXAMPLE_FOLDER`` picks the Simvue folder (default ``/examples/offline``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from simvue_otel import Run

FOLDER = os.environ.get("EXAMPLE_FOLDER", "/examples/offline")
CACHE = Path(os.environ.get("SIMVUE_OFFLINE_DIRECTORY") or "~/.simvue").expanduser().absolute()


def send_command(cache: Path) -> str:
    """The upload command to paste: ``simvue-otel`` by name when the shell finds it, else by
    the path it was installed at beside this Python (a virtual environment not activated)."""
    program = "simvue-otel"
    if not shutil.which(program) and (Path(sys.executable).parent / program).is_file():
        program = str(Path(sys.executable).parent / program)
    return f"{shlex.quote(program)} send --cache {shlex.quote(str(cache))}"


def main() -> None:
    with Run(mode="offline", offline_directory=CACHE) as run:
        run.init(
            name="offline-worker",
            folder=FOLDER,
            tags=["offline", "worker"],
            metadata={"grid": 64, "solver": "jacobi"},
            description="Jacobi sweeps on a node without network",
            resources_metrics_interval=None,  # no CPU/memory sampling for this short job
        )
        # A 1-D Jacobi iteration for u'' = 0 with u(0) = 0, u(1) = 1.
        n = 64
        u = [0.0] * (n - 1) + [1.0]
        for sweep in range(30):
            new = [u[0]] + [(u[i - 1] + u[i + 1]) / 2 for i in range(1, n - 1)] + [u[-1]]
            change = max(abs(a - b) for a, b in zip(new, u, strict=True))
            u = new
            run.log_metrics({"max_change": change}, step=sweep)
        run.log_event("sweeps done; upload with `simvue-otel send`")
    print(f"recorded {run.name} offline in {CACHE}")
    print("upload it from where the server can be reached (SIMVUE_URL and SIMVUE_TOKEN set):")
    print(f"  {send_command(CACHE)}")


if __name__ == "__main__":
    main()
