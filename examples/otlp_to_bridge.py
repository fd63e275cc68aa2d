"""A run sent over OTLP to ``simvue-otel bridge`` (or to a collector in front of it).

What it shows: ``Run(mode="otlp")`` has the same API as an online run, but sends OTLP instead
of talking to the Simvue server itself. The bridge maps the telemetry to Simvue and writes it
to the server; only the bridge needs ``SIMVUE_URL`` and ``SIMVUE_TOKEN``. Useful when compute
nodes may only reach a collector, or when one bridge serves many jobs.

Start a bridge (it listens for OTLP/HTTP on 4318 and OTLP/gRPC on 4317)::

    export SIMVUE_URL=http://127.0.0.1:8765 SIMVUE_TOKEN=...
    simvue-otel bridge --listen 127.0.0.1:4318 --grpc-listen 127.0.0.1:4317

Then, in another shell (no Simvue URL or token needed)::

    python examples/otlp_to_bridge.py

``OTEL_EXPORTER_OTLP_ENDPOINT`` names another endpoint (default ``http://127.0.0.1:4318``);
for gRPC, also set ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` and point the endpoint at port 4317.
``OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer%20<token>`` when the bridge needs a token.
Optional: ``EXAMPLE_FOLDER`` picks the Simvue folder (default ``/examples/otlp``).
"""

from __future__ import annotations

import os

from simvue_otel import Run

FOLDER = os.environ.get("EXAMPLE_FOLDER", "/examples/otlp")
ENDPOINT = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")


def main() -> None:
    with Run(mode="otlp", otlp_endpoint=ENDPOINT) as run:
        run.init(
            name="otlp-run",
            folder=FOLDER,
            tags=["otlp", "bridge"],
            metadata={"transport": os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http")},
            description="Sent as OTLP to simvue-otel bridge",
            resources_metrics_interval=None,
        )
        value = 1.0
        for _ in range(15):
            value *= 0.9
            run.log_metrics({"decay": value})
        run.log_event("sent through the bridge")
        print(f"{run.name} sent to {ENDPOINT} (run key {run.key})")
    # Leaving the block flushes what is left and waits for the bridge to accept it.


if __name__ == "__main__":
    main()
