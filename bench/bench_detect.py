"""What recording a run's system, git and Python facts costs at ``init``: simvue-otel's
detection (Resource attributes) against the official client's ``get_system``, ``git_info`` and
``environment`` (which runs ``pip freeze`` when the directory has no lock file), measured in
the same run, in the same directory, each in a fresh interpreter so that no cache helps.

    .venv/bin/python bench/bench_detect.py [--repeat N] [--cwd DIR]

By default both run in a fresh clone of this repository (a checkout with an ``origin``
remote: the official ``git_info`` raises in a checkout without one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

OURS = """
import json, time
t = time.perf_counter()
from simvue_otel._internal.detect import detect
imported = time.perf_counter()
attributes = detect()
done = time.perf_counter()
print(json.dumps({"import": imported - t, "gather": done - imported, "count": len(attributes)}))
"""

OFFICIAL = """
import json, pathlib, time
t = time.perf_counter()
from simvue.metadata import environment, git_info
from simvue.system import get_system
imported = time.perf_counter()
facts = {"system": get_system(), **environment(), **git_info(pathlib.Path.cwd())}
done = time.perf_counter()
print(json.dumps({"import": imported - t, "gather": done - imported, "count": len(facts)}))
"""


def measure(script: str, cwd: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cwd", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.cwd is None:
            args.cwd = Path(tmp) / "checkout"
            source = Path(__file__).resolve().parent.parent
            subprocess.run(["git", "clone", "-q", str(source), str(args.cwd)], check=True)
        ours = [measure(OURS, args.cwd)["gather"] for _ in range(args.repeat)]
        theirs = [measure(OFFICIAL, args.cwd)["gather"] for _ in range(args.repeat)]
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"facts gathered at init, median of {args.repeat} fresh processes, in a checkout:")
    print(f"  simvue-otel detect():                      {o * 1000:8.1f} ms")
    print(f"  official get_system + environment + git:   {t * 1000:8.1f} ms")
    print(f"  ratio official / ours:                     {t / o:8.1f}x")


if __name__ == "__main__":
    main()
