"""How long ``simvue-otel demo --exit`` takes, start to exit: a newcomer's first minute. The
design target is about 10 seconds on an idle machine (the simulation itself is paced to 3 s);
the suite checks what the demo records, this measures how long it takes.

    .venv/bin/python bench/bench_demo.py [--repeat N]

Each run uses a fresh temporary home, database and free port on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def once() -> float:
    """One ``demo --exit`` in a fresh home; its wall time in seconds."""
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
        env["HOME"] = tmp
        cmd = [sys.executable, "-m", "simvue_otel", "demo", "--exit", "--port",
               str(_free_port()), "--db", str(Path(tmp) / "demo.db")]  # fmt: skip
        began = time.monotonic()
        done = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
        took = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"the demo failed:\n{done.stderr}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    times = [once() for _ in range(args.repeat)]
    median = statistics.median(times)
    print(f"demo --exit: median {median:.1f} s over {len(times)} runs "
          f"(range {min(times):.1f}-{max(times):.1f} s), {os.cpu_count()} CPUs")  # fmt: skip
    if median > TARGET_SECONDS:
        print(f"design target missed: about {TARGET_SECONDS:.0f} s")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
