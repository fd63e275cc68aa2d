"""Where a ``Run.log_metrics`` loop spends its time, thread by thread, with py-spy.

    pip install py-spy   # a sampling profiler; not a dependency of the project
    SIMVUE_URL=... SIMVUE_TOKEN=... py-spy record --idle -r 500 -f raw -o online.txt -- \\
        .venv/bin/python bench/profile_run.py online 100000
    .venv/bin/python bench/profile_run.py --analyze online.txt

The first form runs ``--calls`` calls of ``log_metrics({5 values}, step=i)`` in the given mode
(the profile includes the imports and the close, which the summary keeps apart); the second
reads py-spy's raw output and prints, for the calling thread, the pipeline's worker and the
online sink's worker, the share of samples each takes and the functions that take them.
"""

from __future__ import annotations

import collections
import re
import sys
import time

_LABEL = re.compile(r"^(?P<name>.*?) \((?P<file>[^()]*?):\d+\)$")


def run(mode: str, calls: int) -> None:
    from simvue_otel import Run

    with Run(mode=mode) as run:  # type: ignore[arg-type]
        run.init(name=f"profile-{mode}", folder="/profile", resources_metrics_interval=None)
        began = time.perf_counter()
        for i in range(calls):
            run.log_metrics({"m0": 0.1 * i, "m1": 1.0, "m2": 2.0, "m3": 3.0, "m4": 4.0}, step=i)
        loop = time.perf_counter() - began
    print(f"{mode}: {loop / calls * 1e6:.1f} us per call over {calls:,} calls", file=sys.stderr)


def _thread(frames: list[str]) -> str:
    text = ";".join(frames)
    if "profile_run.py" in text:
        return "caller"
    if "Pipeline._run" in text:
        return "pipeline worker"
    if "OnlineSink._run" in text:
        return "online sink worker"
    return "other"


def _label(frame: str) -> str:
    found = _LABEL.match(frame)
    if found is None:
        return frame
    return f"{found['name']} [{found['file'].rsplit('/', 1)[-1]}]"


def analyze(path: str, top: int = 12) -> None:
    threads: collections.Counter[str] = collections.Counter()
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = stack.split(";")[1:]
            if not frames or not count.isdigit():
                continue
            n, thread = int(count), _thread(frames)
            if thread == "caller" and any("importlib" in f or "<module>" in f for f in frames[1:]):
                thread = "caller (imports)"
            threads[thread] += n
            for label in {_label(f) for f in frames}:
                inclusive[thread][label] += n
            own[thread][_label(frames[-1])] += n
    total = sum(threads.values())
    for thread, n in threads.most_common():
        print(f"\n{thread}: {n / total:.0%} of all samples")
        if thread in ("other", "caller (imports)"):
            continue
        print("  inclusive:")
        for label, c in inclusive[thread].most_common(top):
            print(f"    {c / n:6.1%}  {label}")
        print("  own time:")
        for label, c in own[thread].most_common(top // 2):
            print(f"    {c / n:6.1%}  {label}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--analyze":
        analyze(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] in ("online", "offline", "disabled"):
        run(sys.argv[1], int(sys.argv[2]))
    else:
        sys.exit(__doc__)
