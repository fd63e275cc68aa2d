"""How the local server's reads grow with what it stores (127.0.0.1 only).

    .venv/bin/python bench/bench_server_reads.py [--points 1000000] [--repeat 5]

A fresh ``simvue-otel server`` (database in a temporary directory) gets 20 runs of 10 points;
``GET /api/runs``, ``GET /api/runs/<id>``, the runs list page and a run page are timed (median
of ``--repeat``). Then ``--points`` values are added to one run, in POSTs of 16,000 entries as
the official client sends them, and the same reads are timed again: the ratio after/before says
whether a read grows with the stored volume. Also printed: the ingestion rate of those POSTs
and the database's bytes on disk per stored value.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import requests

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from bench_export import Server  # noqa: E402  (the bench directory is not a package)

STAMP = "2026-01-01T00:00:00.000000"


def post(session: requests.Session, url: str, kind: str, run: str, entries: list[Any]) -> None:
    reply = session.post(
        f"{url}/api/{kind}",
        data=msgpack.packb({"run": run, kind: entries}),
        headers={"Content-Type": "application/msgpack"},
        timeout=300,
    )
    reply.raise_for_status()


def timed(session: requests.Session, url: str, repeat: int) -> float:
    """Median seconds of ``repeat`` GETs of ``url`` (one warm-up first)."""
    session.get(url, timeout=300).raise_for_status()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        session.get(url, timeout=300).raise_for_status()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def sign_in(url: str, token: str) -> requests.Session:
    """A browser-like session, signed in through the web view's form with the token."""
    web = requests.Session()
    web.trust_env = False
    page = web.get(f"{url}/login", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    if csrf is None:
        raise RuntimeError("the sign-in form has no csrf field")
    reply = web.post(
        f"{url}/login",
        data={"token": token, "next": "/", "csrf": csrf.group(1)},
        allow_redirects=False,
        timeout=30,
    )
    if reply.status_code != 303:
        raise RuntimeError(f"sign-in failed: {reply.status_code} {reply.text[:200]}")
    return web


def reads(
    session: requests.Session, web: requests.Session, url: str, run: str, n: int
) -> dict[str, float]:
    return {
        "GET /api/runs": timed(session, f"{url}/api/runs?count=100&return_metrics=True", n),
        "GET /api/runs/<id>": timed(session, f"{url}/api/runs/{run}", n),
        "runs list page": timed(web, f"{url}/", n),
        "run page": timed(web, f"{url}/runs/{run}", n),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        server.start()
        try:
            token = server.token()
            session = requests.Session()
            session.trust_env = False
            session.headers["Authorization"] = f"Bearer {token}"
            web = sign_in(server.url, token)
            runs = []
            for i in range(20):
                reply = session.post(
                    f"{server.url}/api/runs",
                    json={"name": f"run-{i}", "folder": "/bench", "status": "running"},
                    timeout=30,
                )
                reply.raise_for_status()
                runs.append(reply.json()["id"])
                entries = [{"values": {"x": float(s)}, "step": s, "time": float(s),
                            "timestamp": STAMP} for s in range(10)]  # fmt: skip
                post(session, server.url, "metrics", runs[-1], entries)
            big = runs[0]
            before = reads(session, web, server.url, big, args.repeat)
            began = time.perf_counter()
            for start in range(0, args.points, 16_000):
                entries = [{"values": {"y": float(s % 977)}, "step": s, "time": s / 100,
                            "timestamp": STAMP}
                           for s in range(start, min(args.points, start + 16_000))]  # fmt: skip
                post(session, server.url, "metrics", big, entries)
            ingest = time.perf_counter() - began
            after = reads(session, web, server.url, big, args.repeat)
            stored = args.points + 200
            size = sum(p.stat().st_size for p in Path(tmp).glob("s.db*"))
        finally:
            server.stop()
    print(f"local server reads, median of {args.repeat}, before and after {args.points:,} "
          f"points in one run:")  # fmt: skip
    for name in before:
        ratio = after[name] / before[name]
        print(f"  {name:<20} {before[name] * 1000:9.1f} ms -> {after[name] * 1000:9.1f} ms "
              f"({ratio:4.1f}x)")  # fmt: skip
    print(f"  ingestion: {args.points / ingest:,.0f} values/s over {args.points // 16_000 + 1} "
          f"POSTs of up to 16,000 entries")  # fmt: skip
    print(f"  on disk: {size / stored:.0f} bytes per stored value ({size / 2**20:.0f} MiB)")
    print(json.dumps({"before": before, "after": after, "bytes_per_value": size / stored}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
