"""Benchmarks of ``simvue_otel.Run`` (Simvue's Run API) against its own local server and the
official ``simvue`` client in offline mode (127.0.0.1 only).

    .venv/bin/python bench/bench_run.py [--quick]

1. per-call cost of ``run.log_metrics({5 values}, step=i)`` on the caller's thread, ours
   offline and online, the official client offline; ratio official/ours;
2. time to close the run (the ``with`` exit) after those calls; ours online is then checked
   on the server: every step of metric ``m0`` exactly once;
3. peak memory (RSS sampled every 50 ms, minus the RSS before ``Run()``) for the same runs,
   and for 1,000,000 calls of ours online (full run only) to show memory stays bounded;
4. CPU cost of resource sampling at a 1 s interval in an otherwise idle process, against an
   identical process with sampling off.

Every measurement runs in a fresh child interpreter (this script with ``--child``) that prints
one ``RESULT {json}`` line. The local server and small helpers come from ``bench_export.py``.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from bench_export import (  # noqa: E402  (the bench directory is not a package)
    LOCAL_ENV,
    RESULT_PREFIX,
    ChildFailed,
    Server,
    child_result,
    dir_bytes,
    fmt_mib,
    med,
    problems_in,
    report_problems,
    spread,
    table,
    tail,
)

SCRIPT = Path(__file__).resolve()
FOLDER = "/bench"
METRICS = ("m0", "m1", "m2", "m3", "m4")
SAMPLE_EVERY_S = 0.05
# Generous, so a slow close shows up as time rather than as data left in the spool.
CLOSE_TIMEOUT_S = "180"


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"calls": 20_000, "repeats": 3, "big_calls": 0, "idle_s": 10.0}
    return {"calls": 100_000, "repeats": 3, "big_calls": 1_000_000, "idle_s": 30.0}


# -- helpers used by children ---------------------------------------------------------------


class RssSampler:
    """Peak RSS of this process, sampled every 50 ms in a daemon thread; once a second it also
    notes (seconds, RSS, ``probe()``) for a timeline (``probe``: e.g. a queue's length)."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.baseline = self._proc.memory_info().rss
        self.peak = self.baseline
        self.probe: Any = None
        self.peak_probe = 0
        self.timeline: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        t0 = time.monotonic()
        next_mark = 0.0
        while not self._stop.wait(SAMPLE_EVERY_S):
            rss = self._proc.memory_info().rss
            self.peak = max(self.peak, rss)
            probe = self.probe
            value = int(probe()) if probe is not None else 0
            self.peak_probe = max(self.peak_probe, value)
            now = time.monotonic() - t0
            if now >= next_mark:
                self.timeline.append((round(now, 1), rss - self.baseline, value))
                next_mark += 1.0

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self._proc.memory_info().rss)
        return self.peak - self.baseline


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def verify_on_server(url: str, token: str, name: str, calls: int) -> dict[str, Any]:
    """Find the run by name in /bench; is every step 0..calls-1 of ``m0`` there exactly once?"""
    from simvue_otel._internal.client import SimvueClient

    start = time.perf_counter()
    with SimvueClient(url, token, timeout=300.0) as client:
        run = next(iter(client.find_runs_by_name(name, FOLDER)), None)
        if run is None:
            return {"found": False, "count": 0, "unique": 0, "exact": False, "verify_s": 0.0}
        points = client.get_metrics(str(run["id"]), ["m0"]).get("m0", [])
    steps = [int(p["step"]) for p in points]
    unique = set(steps)
    return {
        "found": True,
        "status": run.get("status"),
        "count": len(steps),
        "unique": len(unique),
        "exact": len(steps) == calls and unique == set(range(calls)),
        "verify_s": time.perf_counter() - start,
    }


def official_written(offline_dir: Path) -> int:
    """Records of ``m0`` the official client left in its offline directory."""
    written = 0
    for path in (offline_dir / "metrics").glob("*.json"):
        try:
            batch = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        written += sum(1 for m in batch.get("metrics", []) if "m0" in m.get("values", {}))
    return written


# -- child: N log_metrics calls, then close -------------------------------------------------


def child_calls(args: argparse.Namespace) -> None:
    n = args.calls
    name = f"bench-run-{args.impl}-{args.mode}-{uuid.uuid4().hex[:8]}"
    if args.impl == "official":
        from simvue import Run as OfficialRun

        make: Any = lambda: OfficialRun(mode="offline")  # noqa: E731
    else:
        from simvue_otel import Run

        make = lambda: Run(mode=args.mode)  # noqa: E731

    sampler = RssSampler().start()  # baseline: after the imports, before Run()
    start = time.perf_counter()
    with make() as run:
        if args.impl == "official":
            config_ok = run.config(disable_resources_metrics=True)
            run.init(name=name, folder=FOLDER)
        else:
            config_ok = True
            run.init(name=name, folder=FOLDER, resources_metrics_interval=None)
            queue = getattr(getattr(run, "_pipeline", None), "_queue", None)
            if queue is not None:
                sampler.probe = queue.__len__  # records waiting for the pipeline's worker
        init_s = time.perf_counter() - start
        log = run.log_metrics
        start, thread_start = time.perf_counter(), time.thread_time()
        for i in range(n):
            log({"m0": 1.0 * i, "m1": 2.0, "m2": 3.0, "m3": 4.0, "m4": 5.0}, step=i)
        loop_s = time.perf_counter() - start
        thread_s = time.thread_time() - thread_start
        close_start = time.perf_counter()
    close_s = time.perf_counter() - close_start
    growth = sampler.stop()
    offline_dir = Path(os.environ["SIMVUE_OFFLINE_DIRECTORY"])
    out: dict[str, Any] = {
        "impl": args.impl,
        "mode": args.mode,
        "name": name,
        "calls": n,
        "config_ok": bool(config_ok),
        "init_s": init_s,
        "loop_s": loop_s,
        "us_per_call": loop_s / n * 1e6,
        "thread_us_per_call": thread_s / n * 1e6,
        "close_s": close_s,
        "rss_baseline": sampler.baseline,
        "rss_peak": sampler.peak,
        "rss_growth": growth,
        "peak_queue": sampler.peak_probe,
        "timeline": sampler.timeline,
        "disk_bytes": dir_bytes(offline_dir),
    }
    if args.impl == "official":
        out["written"] = official_written(offline_dir)
    elif args.mode == "online" and args.verify:
        out.update(verify_on_server(args.url, os.environ["SIMVUE_TOKEN"], name, n))
    child_result(out)


# -- child: an idle run, with or without resource sampling ----------------------------------


def child_idle(args: argparse.Namespace) -> None:
    from simvue_otel import Run

    interval = float(args.interval) if args.interval != "none" else None
    with Run(mode="offline") as run:
        run.init(
            name=f"bench-idle-{uuid.uuid4().hex[:8]}",
            folder=FOLDER,
            resources_metrics_interval=interval,
        )
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        time.sleep(args.seconds)
        wall_s, cpu_s = time.perf_counter() - wall0, cpu_seconds() - cpu0
    child_result(
        {
            "interval": interval,
            "wall_s": wall_s,
            "cpu_s": cpu_s,
            "pct_core": cpu_s / wall_s * 100.0,
            "threads": threading.active_count(),
            "disk_bytes": dir_bytes(Path(os.environ["SIMVUE_OFFLINE_DIRECTORY"])),
        }
    )


# -- the orchestrator -----------------------------------------------------------------------


def start_child(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(SCRIPT), "--child", *argv]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env, **LOCAL_ENV),
        cwd=cwd,
        start_new_session=True,
    )


def finish_child(proc: subprocess.Popen[str], label: str, timeout: float) -> dict[str, Any]:
    """Wait for a child; its RESULT, or ChildFailed (a crash, no result, or a hang)."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise ChildFailed(f"{label} hung: killed after {timeout:.0f} s\n{tail(err)}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_PREFIX):
            data: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            data["stderr"] = err
            if proc.returncode:
                raise ChildFailed(f"{label} exited {proc.returncode}:\n{tail(err)}")
            return data
    raise ChildFailed(f"{label} failed (exit {proc.returncode}):\n{tail(err or out)}")


class Bench:
    def __init__(self, tmp: Path, url: str, token: str) -> None:
        self.tmp = tmp
        self.url = url
        self.token = token
        self.problems: list[str] = []
        self.count = 0

    def env(self, label: str) -> tuple[dict[str, str], Path]:
        """A fresh home, working directory and offline directory for one child."""
        self.count += 1
        home = self.tmp / f"{self.count:02d}-{label}"
        (home / "cache").mkdir(parents=True)
        env = dict(
            os.environ,
            HOME=str(home),
            SIMVUE_URL=self.url,
            SIMVUE_TOKEN=self.token,
            SIMVUE_OFFLINE_DIRECTORY=str(home / "cache"),
            SIMVUE_OTEL_SHUTDOWN_TIMEOUT=CLOSE_TIMEOUT_S,
        )
        return env, home

    def calls(
        self, impl: str, mode: str, n: int, tag: str, verify: bool = True
    ) -> dict[str, Any] | None:
        label = f"{impl} {mode}, {n:,} calls"
        print(f"{tag} {label}", flush=True)
        env, home = self.env(f"{impl}-{mode}")
        argv = ["calls", "--impl", impl, "--mode", mode, "--calls", str(n), "--url", self.url]
        if verify:
            argv.append("--verify")
        try:
            res = finish_child(start_child(argv, env, home), label, timeout=400)
        except ChildFailed as exc:
            self.problems.append(f"{tag} {exc}")
            return None
        if impl == "official":
            if res["written"] != n:
                self.problems.append(
                    f"{tag} {label}: {res['written']} of {n} records found on disk after close"
                )
            return res
        self.problems += [f"{tag} {label}: {p}" for p in problems_in(res["stderr"])]
        if mode == "online" and verify and not res.get("exact"):
            self.problems.append(
                f"{tag} {label}: the server holds {res.get('count')} points of 'm0' "
                f"({res.get('unique')} unique steps; run found: {res.get('found')}) for {n} "
                f"calls after a close of {res['close_s']:.2f} s"
            )
        if mode == "offline" and res["disk_bytes"] == 0:
            self.problems.append(f"{tag} {label}: nothing written to the offline directory")
        return res

    def idle_pair(self, seconds: float) -> dict[str, dict[str, Any]]:
        """Sampling on and off, side by side (they sleep, so they do not compete)."""
        procs = {}
        for interval in ("1", "none"):
            env, home = self.env(f"idle-{interval}")
            argv = ["idle", "--interval", interval, "--seconds", str(seconds)]
            procs[interval] = start_child(argv, env, home)
        out: dict[str, dict[str, Any]] = {}
        for interval, proc in procs.items():
            label = f"idle run, resources_metrics_interval={interval}"
            try:
                res = finish_child(proc, label, timeout=seconds + 120)
            except ChildFailed as exc:
                self.problems.append(f"[4] {exc}")
                continue
            self.problems += [f"[4] {label}: {p}" for p in problems_in(res["stderr"])]
            out[interval] = res
        return out


def load() -> str:
    """The 1-minute load average, where the platform has one."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def ratio(official: float, ours: float) -> str:
    return f"{official / ours:.1f}x" if ours > 0 else "n/a"


def orchestrate(quick: bool) -> int:
    sizes = plan(quick)
    n = sizes["calls"]
    started = time.monotonic()
    load_at_start = load()
    print(
        f"simvue-otel Run benchmark ({'quick' if quick else 'full'}); "
        f"{os.cpu_count()} CPU(s), Python {sys.version.split()[0]}",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {"offline": [], "online": [], "official": []}
    big: dict[str, Any] | None = None
    idle: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="simvue-otel-bench-run-") as tmp_name:
        tmp = Path(tmp_name)
        server = Server(tmp / "server")
        try:
            server.start()
            bench = Bench(tmp, server.url, server.token())
            # 1-3: repeats interleave the three clients so any drift is shared.
            for rep in range(sizes["repeats"]):
                tag = f"[1-3] repeat {rep + 1}:"
                for key, impl, mode in (
                    ("offline", "ours", "offline"),
                    ("online", "ours", "online"),
                    ("official", "official", "offline"),
                ):
                    res = bench.calls(impl, mode, n, tag)
                    if res is not None:
                        results[key].append(res)
            if sizes["big_calls"]:
                big = bench.calls("ours", "online", sizes["big_calls"], "[3] bounded memory:")
            print(f"[4] idle runs, {sizes['idle_s']:.0f} s, sampling at 1 s and off", flush=True)
            idle = bench.idle_pair(sizes["idle_s"])
        except (RuntimeError, OSError) as exc:
            print(f"benchmark aborted: {exc}", flush=True)
            return 1
        finally:
            server.stop()
    problems = bench.problems
    notes: list[str] = []
    report: list[str] = []
    official = results["official"]
    off_med = {
        k: med([r[k] for r in official]) if official else 0.0
        for k in ("us_per_call", "close_s", "rss_growth")
    }

    # 1. per-call cost
    rows: list[tuple[str, str]] = []
    for key in ("offline", "online"):
        res = results[key]
        if not res:
            rows.append((f"ours, {key}", "no result"))
            continue
        us = [r["us_per_call"] for r in res]
        rows.append((f"ours, {key}", spread(us, " us")))
        own = [r["thread_us_per_call"] for r in res]
        rows.append(("  CPU of the calling thread itself", spread(own, " us")))
        if official:
            r = off_med["us_per_call"] / med(us)
            rows.append((f"  ratio official/ours-{key}", f"{r:.1f}x"))
            if r < 5:
                notes.append(f"[1] ours {key}: {r:.1f}x faster than the official client (< 5x)")
        if med(us) > 15:
            notes.append(f"[1] ours {key}: {med(us):.1f} us per call (> 15 us)")
    if official:
        rows.append(("official, offline", spread([r["us_per_call"] for r in official], " us")))
        own = [r["thread_us_per_call"] for r in official]
        rows.append(("  CPU of the calling thread itself", spread(own, " us")))
        rows.append(("official: config(disable_resources_metrics)", str(official[0]["config_ok"])))
    else:
        rows.append(("official, offline", "no result"))
    report.append(
        table(
            f"1. run.log_metrics({{5 values}}, step=i), {n:,} calls: per call on the caller's "
            f"thread, median [min-max] of {sizes['repeats']}",
            rows,
        )
    )

    # 2. close
    rows = []
    for key in ("offline", "online"):
        res = results[key]
        if not res:
            rows.append((f"ours, {key}", "no result"))
            continue
        cl = [r["close_s"] for r in res]
        rows.append((f"ours, {key}", spread(cl, " s")))
        if official:
            rows.append((f"  ratio official/ours-{key}", ratio(off_med["close_s"], med(cl))))
        if key == "online":
            if med(cl) >= 1.0:
                notes.append(f"[2] ours online: close {med(cl):.2f} s after {n:,} calls (>= 1 s)")
            rates = [n * len(METRICS) / (r["loop_s"] + r["close_s"]) for r in res]
            rows.append(("  end to end (calls + close)", spread(rates, " values/s", digits=0)))
            if med(rates) < 250_000:
                notes.append(f"[2] ours online: {med(rates):,.0f} values/s end to end (< 250,000)")
            ok = sum(1 for r in res if r.get("exact"))
            counts = ", ".join(f"{r.get('count', 0):,}" for r in res)
            rows.append(("  server holds m0 points", f"{counts} (of {n:,} each)"))
            rows.append(
                ("  delivered (every step once)", f"{'PASS' if ok == len(res) else 'FAIL'}")
            )
            rows.append(("  verify (query) time", spread([r["verify_s"] for r in res], " s")))
        else:
            rows.append(("  spool on disk", fmt_mib(med([r["disk_bytes"] for r in res]))))
    if official:
        rows.append(("official, offline", spread([r["close_s"] for r in official], " s")))
        rows.append(("  files on disk", fmt_mib(med([r["disk_bytes"] for r in official]))))
        rows.append(("  init (for reference)", spread([r["init_s"] for r in official], " s")))
    for key in ("offline", "online"):
        if results[key]:
            init = spread([r["init_s"] for r in results[key]], " s")
            rows.append((f"ours {key}: init (for reference)", init))
    report.append(
        table(f"2. Time to close (the `with` exit) after {n:,} calls, median [min-max]", rows)
    )

    # 3. memory
    rows = []
    for key in ("offline", "online"):
        res = results[key]
        if not res:
            rows.append((f"ours, {key}", "no result"))
            continue
        growth = [r["rss_growth"] for r in res]
        rows.append(
            (
                f"ours, {key}",
                f"{fmt_mib(med(growth))} [{fmt_mib(min(growth))}-{fmt_mib(max(growth))}]",
            )
        )
        if official:
            rows.append((f"  ratio official/ours-{key}", ratio(off_med["rss_growth"], med(growth))))
        if key == "online" and med(growth) > 64 * 2**20:
            notes.append(f"[3] ours online: peak RSS growth {fmt_mib(med(growth))} (> 64 MiB)")
        queued = med([r["peak_queue"] for r in res])
        rows.append(("  peak pipeline queue", f"{queued:,.0f} records"))
    if official:
        growth = [r["rss_growth"] for r in official]
        rows.append(
            (
                "official, offline",
                f"{fmt_mib(med(growth))} [{fmt_mib(min(growth))}-{fmt_mib(max(growth))}]",
            )
        )
    for label, keys in (("ours", ("offline", "online")), ("official", ("official",))):
        base = [r["rss_baseline"] for k in keys for r in results[k]]
        if base:
            rows.append((f"{label}: RSS before Run() (imports)", fmt_mib(med(base))))
    if big is not None:
        bn = big["calls"]
        rows.append(
            (
                f"ours, online, {bn:,} calls",
                f"{fmt_mib(big['rss_growth'])} ({big['us_per_call']:.1f} us/call, close "
                f"{big['close_s']:.1f} s, server holds {big.get('count', 0):,} m0 points: "
                f"{'PASS' if big.get('exact') else 'FAIL'})",
            )
        )
        rows.append(("  peak pipeline queue", f"{big['peak_queue']:,} records"))
        marks = big["timeline"][::3] + big["timeline"][-1:]
        rows.append(
            (
                "  timeline s: RSS growth MiB / queue",
                ", ".join(f"{t:.0f}: {r / 2**20:.0f}/{q // 1000}k" for t, r, q in marks),
            )
        )
        if results["online"]:
            small = med([r["rss_growth"] for r in results["online"]])
            grow = big["rss_growth"] / small if small > 0 else float("inf")
            rows.append((f"  growth {bn // n}x calls", f"{grow:.1f}x the {n:,}-call peak"))
            if grow > 5:
                problems.append(
                    f"[3] memory does not look bounded: {fmt_mib(big['rss_growth'])} for {bn:,} "
                    f"calls vs {fmt_mib(small)} for {n:,} ({grow:.1f}x)"
                )
    elif sizes["big_calls"]:
        rows.append(("ours, online, 1,000,000 calls", "no result"))
    report.append(
        table(
            f"3. Peak RSS growth (sampled every {SAMPLE_EVERY_S * 1000:.0f} ms, minus RSS before "
            f"Run()), {n:,} calls incl. close, median [min-max]",
            rows,
        )
    )

    # 4. resource sampling
    rows = []
    on, off = idle.get("1"), idle.get("none")
    for label, res in (("sampling every 1 s", on), ("sampling off", off)):
        if res is None:
            rows.append((label, "no result"))
            continue
        rows.append(
            (
                label,
                f"{res['cpu_s'] * 1000:.0f} ms CPU in {res['wall_s']:.1f} s = "
                f"{res['pct_core']:.3f} % of one core; spool {res['disk_bytes'] / 1024:,.1f} KiB",
            )
        )
    if on is not None and off is not None:
        diff = on["pct_core"] - off["pct_core"]
        rows.append(("cost of sampling (difference)", f"{diff:.3f} % of one core"))
        if diff >= 0.5:
            notes.append(f"[4] resource sampling costs {diff:.3f} % of one core (>= 0.5 %)")
        if on["disk_bytes"] <= off["disk_bytes"]:
            problems.append(
                "[4] the sampling run wrote no more to its spool than the run without sampling: "
                "were resource metrics recorded at all?"
            )
    report.append(
        table(
            f"4. CPU of an idle offline run over {sizes['idle_s']:.0f} s "
            "(getrusage user+sys of the process)",
            rows,
        )
    )

    print()
    print(
        f"Machine: {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}, "
        f"{sys.platform}; total bench time {time.monotonic() - started:.0f} s; load average "
        f"{load_at_start} at the start, {load()} at the end (other work on the machine "
        "inflates the timings)"
    )
    print()
    print("\n\n".join(report))
    print()
    targets = (
        "<= 15 us/call, >= 5x the official client, online close < 1 s, >= 250,000 values/s "
        "end to end, online RSS growth <= 64 MiB, sampling < 0.5 % of a core"
    )
    if notes:
        print(f"Design targets missed ({targets})")
        for note in notes:
            print("  " + note)
    else:
        print(f"Design targets ({targets}): all met")
    return report_problems(problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under a minute)")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_as_child(args.child)
    return orchestrate(args.quick)


def run_as_child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_run.py --child")
    parser.add_argument("kind", choices=["calls", "idle"])
    parser.add_argument("--impl", choices=["ours", "official"], default="ours")
    parser.add_argument("--mode", choices=["online", "offline"], default="offline")
    parser.add_argument("--calls", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--interval", default="none")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    {"calls": child_calls, "idle": child_idle}[args.kind](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
