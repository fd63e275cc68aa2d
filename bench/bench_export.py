"""Benchmarks of simvue-otel's export path, against its own local server (127.0.0.1 only).

    .venv/bin/python bench/bench_export.py [--quick]

1. per-call cost of emitting a metrics record (5 values) on the caller's thread, online and
   offline, and the time to close; the official ``simvue`` client in offline mode alongside;
2. end-to-end throughput of metric values into the local server, with a delivery check,
   through the SDK path above and through ``simvue_otel.Run`` (the child of bench_run.py);
3. peak memory while the server is down under a steady load, with an exactly-once check.

Every measurement runs in a child process of this script (a fresh interpreter, so one
measurement's garbage and threads never weigh on the next, and RSS is the workload's own);
the child prints one ``RESULT {json}`` line. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
RUN_SCRIPT = SCRIPT.parent / "bench_run.py"  # its child times simvue_otel.Run
VALUES_PER_CALL = 5
RESULT_PREFIX = "RESULT "
# Loopback only: keep any proxy settings in the environment away from our requests.
LOCAL_ENV = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- sizes ----------------------------------------------------------------------------------


def plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "emit_calls": 20_000,
            "repeats": 3,
            "throughput_calls": 50_000,
            "outage_rate": 20_000,
            "outage_before": 2.0,
            "outage_down": 10.0,
            "outage_after": 3.0,
        }
    return {
        "emit_calls": 100_000,
        "repeats": 3,
        "throughput_calls": 200_000,
        "outage_rate": 20_000,
        "outage_before": 4.0,
        "outage_down": 30.0,
        "outage_after": 5.0,
    }


# -- the local server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A ``python -m simvue_otel server`` subprocess on 127.0.0.1."""

    def __init__(self, workdir: Path, port: int | None = None, db: Path | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.db = db or workdir / "s.db"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.log = self.workdir / f"server-{self.port}-{self.starts}.log"
        cmd = [sys.executable, "-m", "simvue_otel", "server", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--db", str(self.db)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **LOCAL_ENV)
        with self.log.open("wb") as fh:
            self.process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def healthy(self) -> bool:
        try:
            with _NO_PROXY_OPENER.open(self.url + "/health", timeout=1) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def token(self, timeout: float = 10.0) -> str:
        """The token a new database's server prints (``export SIMVUE_TOKEN=...``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                text = line.strip().removeprefix("export ").strip()
                if text.startswith("SIMVUE_TOKEN="):
                    return text.split("=", 1)[1]
            time.sleep(0.05)
        raise RuntimeError(f"server printed no token:\n{self.log.read_text()}")

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- helpers used by children ---------------------------------------------------------------


def dir_bytes(path: Path) -> int:
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += dir_bytes(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            pass
    return total


def spool_pending(spool: Path) -> tuple[int, int]:
    """Unacknowledged bytes in a spool directory, and how many segment files it holds."""
    from simvue_otel._internal.sink.spool import SpoolReader

    reader = SpoolReader(spool)
    return reader.pending_bytes(include_live=True), len(reader.segments(include_live=True))


def send_spool(url: str, token: str, offline_dir: Path) -> str:
    """``simvue-otel send`` the offline directory (what a user does with a left-over spool)."""
    env = dict(os.environ, SIMVUE_URL=url, SIMVUE_TOKEN=token, **LOCAL_ENV)
    cmd = [sys.executable, "-m", "simvue_otel", "send", "--cache", str(offline_dir), "--quiet"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    return (done.stdout + done.stderr).strip().replace(str(offline_dir), "<offline dir>")


def emit_one(logger: Any, i: int) -> None:
    logger.emit(
        body={"a": 1.0 * i, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0},
        event_name="simvue.metrics",
        attributes={"simvue.metrics.step": i, "simvue.metrics.time": 0.001 * i},
    )


def build(mode: str, url: str, token: str, offline_dir: Path) -> dict[str, Any]:
    """The in-process path the Run layer uses: SDK providers → our processors → Pipeline."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from simvue_otel import (
        SimvueLogExporter,
        SimvueLogRecordProcessor,
        SimvueSpanExporter,
        SimvueSpanProcessor,
    )
    from simvue_otel._internal.config import resolve_config
    from simvue_otel._internal.pipeline import Pipeline
    from simvue_otel._internal.sink import create_sink

    cfg = resolve_config(url=url, token=token, offline_directory=offline_dir)
    pipeline = Pipeline(create_sink(mode, cfg))
    key = str(uuid.uuid4())
    res = Resource.create(
        {"simvue.run.key": key, "simvue.run.name": "bench", "simvue.run.folder": "/bench"}
    )
    tp = TracerProvider(resource=res)
    tp.add_span_processor(SimvueSpanProcessor(SimvueSpanExporter(pipeline=pipeline)))
    lp = LoggerProvider(resource=res)
    lp.add_log_record_processor(SimvueLogRecordProcessor(SimvueLogExporter(pipeline=pipeline)))
    return {"pipeline": pipeline, "tp": tp, "lp": lp, "key": key, "cfg": cfg}


def close_all(parts: dict[str, Any], timeout: float) -> tuple[float, bool]:
    start = time.perf_counter()
    parts["lp"].shutdown()
    parts["tp"].shutdown()
    ok = bool(parts["pipeline"].close(timeout))
    return time.perf_counter() - start, ok


def verify(url: str, token: str, key: str, calls: int) -> dict[str, Any]:
    """Fetch metric ``a`` of the run with this key: every step 0..calls-1 exactly once?"""
    from simvue_otel._internal.client import SimvueClient

    start = time.perf_counter()
    with SimvueClient(url, token, timeout=300.0) as client:
        run = client.find_run_by_key(key)
        if run is None:
            return {"found": False, "count": 0, "unique": 0, "exact": False, "verify_s": 0.0}
        points = client.get_metrics(run["id"], ["a"]).get("a", [])
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


def child_result(data: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(data), flush=True)


# -- child: emit N records as fast as possible, then close ----------------------------------


def child_emit(args: argparse.Namespace) -> None:
    token = os.environ["SIMVUE_TOKEN"]
    offline_dir = Path(args.dir)
    parts = build(args.mode, args.url, token, offline_dir)
    logger = parts["lp"].get_logger("bench")
    n = args.calls
    with parts["tp"].get_tracer("bench").start_as_current_span("simvue.run"):
        start = time.perf_counter()
        for i in range(n):
            emit_one(logger, i)
        emit_s = time.perf_counter() - start
    close_s, ok = close_all(parts, args.close_timeout)
    out: dict[str, Any] = {
        "calls": n,
        "emit_s": emit_s,
        "us_per_call": emit_s / n * 1e6,
        "close_s": close_s,
        "close_ok": ok,
        "spool_bytes": dir_bytes(offline_dir / "otel-spool"),
    }
    if args.verify:
        out.update(verify(args.url, token, parts["key"], n))
    child_result(out)


# -- child: the official client in offline mode ---------------------------------------------


def child_official(args: argparse.Namespace) -> None:
    from simvue import Run

    n = args.calls
    start = time.perf_counter()
    with Run(mode="offline") as run:
        run.init(name=f"bench-official-{uuid.uuid4().hex[:8]}", folder="/bench")
        init_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(n):
            run.log_metrics({"a": 1.0 * i, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0}, step=i)
        emit_s = time.perf_counter() - start
        close_start = time.perf_counter()
    close_s = time.perf_counter() - close_start
    offline_dir = Path(os.environ["SIMVUE_OFFLINE_DIRECTORY"])
    written = 0
    for path in (offline_dir / "metrics").glob("*.json"):
        try:
            batch = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        written += sum(1 for m in batch.get("metrics", []) if "a" in m.get("values", {}))
    child_result(
        {
            "calls": n,
            "init_s": init_s,
            "emit_s": emit_s,
            "us_per_call": emit_s / n * 1e6,
            "close_s": close_s,
            "written": written,
            "spool_bytes": dir_bytes(offline_dir),
        }
    )


# -- child: server down for a while under a steady load -------------------------------------


def child_outage(args: argparse.Namespace) -> None:
    import psutil

    work = Path(args.dir)
    server = Server(work / "server")
    proc = psutil.Process()
    result: dict[str, Any] = {}
    try:
        server.start()
        token = server.token()
        offline_dir = work / "offline"
        parts = build("online", server.url, token, offline_dir)
        logger = parts["lp"].get_logger("bench")
        tracer = parts["tp"].get_tracer("bench")
        pipeline = parts["pipeline"]
        spool = offline_dir / "otel-spool"

        stop_producer = threading.Event()
        stop_sampler = threading.Event()
        produced = {"calls": 0, "worst_call_s": 0.0, "active_s": 0.0, "error": None}
        peaks = {"rss": 0, "spool": 0, "queue": 0, "buffered": 0}
        timeline: list[tuple[float, int, int]] = []

        def sample() -> None:
            t0 = time.monotonic()
            next_disk = 0.0
            while not stop_sampler.is_set():
                rss = proc.memory_info().rss
                peaks["rss"] = max(peaks["rss"], rss)
                peaks["queue"] = max(peaks["queue"], len(getattr(pipeline, "_queue", ())))
                buffered = getattr(pipeline.sink, "_buffered", 0)
                peaks["buffered"] = max(peaks["buffered"], buffered)
                now = time.monotonic()
                if now >= next_disk:
                    size = dir_bytes(spool)
                    peaks["spool"] = max(peaks["spool"], size)
                    timeline.append((round(now - t0, 1), rss, size))
                    next_disk = now + 1.0
                stop_sampler.wait(0.1)

        def produce() -> None:
            rate = args.rate
            i = 0
            worst = 0.0
            clock = time.perf_counter
            try:
                with tracer.start_as_current_span("simvue.run"):
                    t0 = time.monotonic()
                    while not stop_producer.is_set():
                        due = int((time.monotonic() - t0) * rate)
                        if i >= due:
                            time.sleep(0.002)
                            continue
                        end = min(due, i + 2000)
                        while i < end:
                            c0 = clock()
                            emit_one(logger, i)
                            dt = clock() - c0
                            worst = max(worst, dt)
                            i += 1
                    produced["active_s"] = time.monotonic() - t0
            except BaseException as exc:  # report, never hide
                produced["error"] = repr(exc)
            finally:
                produced["calls"] = i
                produced["worst_call_s"] = worst

        baseline_rss = proc.memory_info().rss
        sampler = threading.Thread(target=sample, daemon=True)
        producer = threading.Thread(target=produce, daemon=True)
        sampler.start()
        result["baseline_rss"] = baseline_rss
        producer.start()
        time.sleep(args.before)
        t_stop = time.monotonic()
        server.stop()  # SIGTERM, waits for exit
        result["stop_s"] = time.monotonic() - t_stop
        time.sleep(args.down)
        t_restart = time.monotonic()
        server.start()  # same port, same database; prints no token this time
        result["restart_s"] = time.monotonic() - t_restart
        time.sleep(args.after)
        stop_producer.set()
        producer.join(60)
        result["producer_stuck"] = producer.is_alive()
        close_s, ok = close_all(parts, args.close_timeout)
        stop_sampler.set()
        sampler.join(5)
        calls = produced["calls"]
        result.update(
            {
                "calls": calls,
                "rate": calls / produced["active_s"] if produced["active_s"] else 0.0,
                "worst_call_ms": produced["worst_call_s"] * 1e3,
                "producer_error": produced["error"],
                "peak_rss": peaks["rss"],
                "peak_spool": peaks["spool"],
                "peak_queue": peaks["queue"],
                "peak_buffered": peaks["buffered"],
                "spool_left": dir_bytes(spool),
                "close_s": close_s,
                "close_ok": ok,
                "timeline": timeline,
            }
        )
        result["spool_pending"], result["spool_segments"] = spool_pending(spool)
        result.update(verify(server.url, token, parts["key"], calls))
        if not result["exact"] and result["spool_pending"]:
            # Were the missing points lost, or left on disk? Upload the spool and count again.
            result["send_output"] = send_spool(server.url, token, offline_dir)
            after = verify(server.url, token, parts["key"], calls)
            result["after_send"] = {k: after[k] for k in ("count", "unique", "exact")}
    finally:
        server.stop()
    child_result(result)


# -- the orchestrator -----------------------------------------------------------------------


class ChildFailed(RuntimeError):
    pass


def run_child(
    argv: list[str],
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    script: Path = SCRIPT,
) -> dict[str, Any]:
    """Run this script (or another bench script) as a child; return its RESULT. The child
    gets its own process group, so a hung child is killed together with any server it
    started."""
    cmd = [sys.executable, str(script), "--child", *argv]
    full_env = dict(os.environ if env is None else env, **LOCAL_ENV)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise ChildFailed(f"{argv[0]} hung: killed after {timeout:.0f} s\n{tail(err)}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_PREFIX):
            data: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            data["stderr"] = err
            return data
    raise ChildFailed(f"{argv[0]} failed (exit {proc.returncode}):\n{tail(err or out)}")


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def problems_in(stderr: str) -> list[str]:
    keep = ("WARNING", "ERROR", "Traceback", "Exception", "Error")
    return [line for line in stderr.splitlines() if any(k in line for k in keep)][:10]


def fmt_mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    m = med(values)
    if len(values) == 1:
        return f"{m:.{digits}f}{unit}"
    return f"{m:.{digits}f}{unit} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def report_problems(problems: list[str]) -> int:
    """Print the problems seen (or that there were none); the bench's exit code."""
    if problems:
        print("Problems observed")
        print("-----------------")
        for p in problems:
            print("  " + p.replace("\n", "\n    "))
    else:
        print("Problems observed: none")
    return 1 if problems else 0


def table(title: str, rows: list[tuple[str, str]]) -> str:
    width = max(len(r[0]) for r in rows)
    lines = [title, "-" * len(title)]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(lines)


def orchestrate(quick: bool) -> int:
    sizes = plan(quick)
    problems: list[str] = []
    notes: list[str] = []  # design targets missed (reported, not failures)
    report: list[str] = []
    started = time.monotonic()
    print(
        f"simvue-otel export benchmark ({'quick' if quick else 'full'}); "
        f"{os.cpu_count()} CPU(s), Python {sys.version.split()[0]}",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="simvue-otel-bench-") as tmp_name:
        tmp = Path(tmp_name)
        server = Server(tmp / "server")
        emit_results: dict[str, list[dict[str, Any]]] = {"online": [], "offline": []}
        official: list[dict[str, Any]] = []
        throughput: dict[str, Any] | None = None
        run_throughput: dict[str, Any] | None = None
        try:
            server.start()
            token = server.token()
            env = dict(os.environ, SIMVUE_TOKEN=token)
            n = sizes["emit_calls"]

            # 1. per-call cost; repeats interleave the three clients to share any drift.
            for rep in range(sizes["repeats"]):
                for mode in ("online", "offline"):
                    print(f"[1] repeat {rep + 1}: ours {mode}, {n:,} calls", flush=True)
                    argv = ["emit", "--mode", mode, "--calls", str(n), "--url", server.url]
                    argv += ["--dir", str(tmp / f"emit-{mode}-{rep}")]
                    if mode == "online":
                        argv.append("--verify")
                    try:
                        res = run_child(argv, timeout=180, env=env)
                    except ChildFailed as exc:
                        problems.append(f"[1] ours {mode} repeat {rep + 1}: {exc}")
                        continue
                    emit_results[mode].append(res)
                    if not res["close_ok"]:
                        problems.append(
                            f"[1] ours {mode} repeat {rep + 1}: close returned False "
                            f"after {res['close_s']:.1f} s"
                        )
                    if mode == "online" and not res.get("exact"):
                        problems.append(
                            f"[1] ours online repeat {rep + 1}: server holds "
                            f"{res.get('count')} points of 'a' ({res.get('unique')} unique "
                            f"steps) for {n} calls"
                        )
                    problems += [f"[1] ours {mode}: {p}" for p in problems_in(res["stderr"])]
                print(f"[1] repeat {rep + 1}: official client offline, {n:,} calls", flush=True)
                home = tmp / f"official-{rep}"
                (home / "cache").mkdir(parents=True)
                off_env = dict(
                    os.environ,
                    HOME=str(home),
                    SIMVUE_URL=server.url,
                    SIMVUE_TOKEN=token,
                    SIMVUE_OFFLINE_DIRECTORY=str(home / "cache"),
                )
                try:
                    res = run_child(
                        ["official", "--calls", str(n)], timeout=300, env=off_env, cwd=home
                    )
                    official.append(res)
                    if res["written"] != n:
                        problems.append(
                            f"[1] official client repeat {rep + 1}: {res['written']} of {n} "
                            "records found on disk after close"
                        )
                except ChildFailed as exc:
                    problems.append(f"[1] official client repeat {rep + 1}: {exc}")

            # 2. throughput into the local server.
            n2 = sizes["throughput_calls"]
            print(f"[2] throughput: {n2:,} calls x {VALUES_PER_CALL} values, online", flush=True)
            argv = ["emit", "--mode", "online", "--calls", str(n2), "--url", server.url]
            argv += ["--dir", str(tmp / "throughput"), "--verify", "--close-timeout", "180"]
            try:
                throughput = run_child(argv, timeout=400, env=env)
                if not throughput["close_ok"]:
                    problems.append(f"[2] close returned False after {throughput['close_s']:.1f} s")
                problems += [f"[2] {p}" for p in problems_in(throughput["stderr"])]
            except ChildFailed as exc:
                problems.append(f"[2] {exc}")
            # ... and through the Run API (run.log_metrics), the way most users log.
            print(f"[2] throughput: {n2:,} run.log_metrics calls x 5 values, online", flush=True)
            home = tmp / "run-throughput"
            (home / "cache").mkdir(parents=True)
            run_env = dict(
                env,
                HOME=str(home),
                SIMVUE_URL=server.url,
                SIMVUE_OFFLINE_DIRECTORY=str(home / "cache"),
                SIMVUE_OTEL_SHUTDOWN_TIMEOUT="180",
            )
            argv = ["calls", "--impl", "ours", "--mode", "online", "--calls", str(n2)]
            argv += ["--url", server.url, "--verify"]
            try:
                run_throughput = run_child(
                    argv, timeout=400, env=run_env, cwd=home, script=RUN_SCRIPT
                )
                problems += [f"[2] Run: {p}" for p in problems_in(run_throughput["stderr"])]
                if not run_throughput.get("exact"):
                    problems.append(
                        f"[2] Run: the server holds {run_throughput.get('count')} points of "
                        f"'m0' for {n2:,} calls"
                    )
            except ChildFailed as exc:
                problems.append(f"[2] Run: {exc}")
        finally:
            server.stop()

        # 3. server down under load (the child runs its own server).
        print(
            f"[3] outage: {sizes['outage_rate']:,} calls/s, server up "
            f"{sizes['outage_before']:.0f} s, down {sizes['outage_down']:.0f} s, "
            f"up {sizes['outage_after']:.0f} s",
            flush=True,
        )
        outage: dict[str, Any] | None = None
        argv = ["outage", "--dir", str(tmp / "outage"), "--rate", str(sizes["outage_rate"])]
        argv += ["--before", str(sizes["outage_before"]), "--down", str(sizes["outage_down"])]
        argv += ["--after", str(sizes["outage_after"]), "--close-timeout", "180"]
        try:
            outage = run_child(argv, timeout=420)
            problems += [f"[3] {p}" for p in problems_in(outage["stderr"])]
        except ChildFailed as exc:
            problems.append(f"[3] {exc}")

    # -- report -----------------------------------------------------------------------------
    n = sizes["emit_calls"]
    rows: list[tuple[str, str]] = []
    per_call: dict[str, float] = {}
    close: dict[str, float] = {}
    for mode in ("online", "offline"):
        res_list = emit_results[mode]
        if not res_list:
            rows.append((f"ours, {mode}", "no result"))
            continue
        us = [r["us_per_call"] for r in res_list]
        cl = [r["close_s"] for r in res_list]
        per_call[mode], close[mode] = med(us), med(cl)
        rows.append((f"ours, {mode}: per call", spread(us, " us")))
        rows.append((f"ours, {mode}: close", spread(cl, " s")))
        if mode == "online":
            ok = all(r.get("exact") for r in res_list)
            rows.append(("ours, online: delivered", "PASS" if ok else "FAIL"))
        else:
            rows.append(
                ("ours, offline: spool on disk", fmt_mib(med([r["spool_bytes"] for r in res_list])))
            )
    if official:
        us = [r["us_per_call"] for r in official]
        cl = [r["close_s"] for r in official]
        rows.append(("official, offline: per call", spread(us, " us")))
        rows.append(("official, offline: close", spread(cl, " s")))
        rows.append(("official, offline: init", spread([r["init_s"] for r in official], " s")))
        rows.append(
            ("official, offline: files on disk", fmt_mib(med([r["spool_bytes"] for r in official])))
        )
        for mode in ("online", "offline"):
            if mode in per_call:
                rows.append(
                    (f"ratio official/ours-{mode}: per call", f"{med(us) / per_call[mode]:.1f}x")
                )
                rows.append((f"ratio official/ours-{mode}: close", f"{med(cl) / close[mode]:.1f}x"))
    else:
        rows.append(("official client", "no result"))
    report.append(
        table(
            f"1. Emitting a metrics record ({VALUES_PER_CALL} values), {n:,} calls, "
            f"median [min-max] of {sizes['repeats']}",
            rows,
        )
    )

    rows = []
    if throughput:
        t = throughput
        values = t["calls"] * VALUES_PER_CALL
        total = t["emit_s"] + t["close_s"]
        rows += [
            ("calls x values", f"{t['calls']:,} x {VALUES_PER_CALL} = {values:,} values"),
            ("emit time", f"{t['emit_s']:.2f} s ({t['us_per_call']:.1f} us/call)"),
            ("close time (all on server)", f"{t['close_s']:.2f} s (returned {t['close_ok']})"),
            ("throughput", f"{values / total:,.0f} values/s ({t['calls'] / total:,.0f} calls/s)"),
            ("server holds", f"{t.get('count', 0):,} points of 'a', {t.get('unique', 0):,} steps"),
            ("delivery", "PASS" if t.get("exact") else "FAIL"),
        ]
    else:
        rows.append(("throughput", "no result"))
    if run_throughput:
        t = run_throughput
        values = t["calls"] * VALUES_PER_CALL
        total = t["loop_s"] + t["close_s"]
        rate = values / total
        rows += [
            ("through Run: calls x values", f"{t['calls']:,} x {VALUES_PER_CALL} = {values:,}"),
            ("through Run: calls", f"{t['loop_s']:.2f} s ({t['us_per_call']:.1f} us/call)"),
            ("through Run: close (all on server)", f"{t['close_s']:.2f} s"),
            ("through Run: throughput", f"{rate:,.0f} values/s (target >= 250,000)"),
            ("through Run: delivery", "PASS" if t.get("exact") else "FAIL"),
        ]
        if rate < 250_000:
            notes.append(f"[2] through Run: {rate:,.0f} values/s end to end (< 250,000)")
    else:
        rows.append(("through Run", "no result"))
    report.append(table("2. End-to-end throughput into the local server (online)", rows))

    rows = []
    if outage:
        o = outage
        rows += [
            (
                "window",
                f"up {sizes['outage_before']:.0f} s, down {sizes['outage_down']:.0f} s "
                f"(SIGTERM), up {sizes['outage_after']:.0f} s",
            ),
            (
                "calls produced",
                f"{o['calls']:,} at {o['rate']:,.0f} calls/s (target {sizes['outage_rate']:,})",
            ),
            ("worst single emit()", f"{o['worst_call_ms']:.1f} ms"),
            ("baseline RSS", fmt_mib(o["baseline_rss"])),
            ("peak RSS", fmt_mib(o["peak_rss"])),
            ("RSS growth", fmt_mib(o["peak_rss"] - o["baseline_rss"])),
            ("peak spool on disk", fmt_mib(o["peak_spool"])),
            (
                "peak pipeline queue / sink buffer",
                f"{o['peak_queue']:,} records / {o['peak_buffered']:,} values",
            ),
            ("server restart", f"{o['restart_s']:.1f} s"),
            ("close after restart", f"{o['close_s']:.2f} s (returned {o['close_ok']})"),
            (
                "spool left after close",
                f"{fmt_mib(o['spool_left'])} in {o['spool_segments']} segment(s), "
                f"{fmt_mib(o['spool_pending'])} not yet uploaded",
            ),
            ("server holds", f"{o.get('count', 0):,} points of 'a', {o.get('unique', 0):,} steps"),
            ("delivery (each step once)", "PASS" if o.get("exact") else "FAIL"),
        ]
        if "after_send" in o:
            a = o["after_send"]
            rows.append(
                (
                    "after `simvue-otel send`",
                    f"{a['count']:,} points, {a['unique']:,} steps: "
                    f"{'PASS' if a['exact'] else 'FAIL'}",
                )
            )
        marks = [x for x in o["timeline"] if int(x[0]) % 5 == 0 or x is o["timeline"][-1]]
        rows.append(
            (
                "timeline s: RSS MiB / spool MiB",
                ", ".join(f"{t:.0f}: {r / 2**20:.0f}/{d / 2**20:.1f}" for t, r, d in marks),
            )
        )
        if o.get("producer_error"):
            problems.append(f"[3] producer raised {o['producer_error']}")
        if o.get("producer_stuck"):
            problems.append("[3] the producer thread did not stop within 60 s")
        if not o.get("exact"):
            problems.append(
                f"[3] server holds {o.get('count')} points ({o.get('unique')} unique steps) "
                f"for {o['calls']} calls, yet close() returned {o['close_ok']} after "
                f"{o['close_s']:.2f} s with {o['spool_pending']:,} bytes not uploaded in "
                f"the spool"
            )
            if "after_send" in o:
                problems.append(
                    f"[3] `simvue-otel send` of the left-over spool then brought the server to "
                    f"{o['after_send']['count']} points ({o['after_send']['unique']} unique): "
                    f"{o.get('send_output', '')}"
                )
        elif o["spool_pending"]:
            problems.append(f"[3] {o['spool_pending']:,} bytes left un-uploaded in the spool")
    else:
        rows.append(("outage", "no result"))
    report.append(table("3. Memory with the server down under load (online)", rows))

    print()
    print(
        f"Machine: {os.cpu_count()} CPU(s), Python {sys.version.split()[0]}, "
        f"{sys.platform}; total bench time {time.monotonic() - started:.0f} s; load average "
        f"{os.getloadavg()[0]:.2f} at the end (other work on the machine inflates the timings)"
    )
    print()
    print("\n\n".join(report))
    print()
    if notes:
        print("Design targets missed (>= 250,000 values/s end to end through Run)")
        for note in notes:
            print("  " + note)
    else:
        print("Design targets (>= 250,000 values/s end to end through Run): all met")
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
    parser = argparse.ArgumentParser(prog="bench_export.py --child")
    parser.add_argument("kind", choices=["emit", "official", "outage"])
    parser.add_argument("--mode", default="online")
    parser.add_argument("--calls", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--dir", default="")
    parser.add_argument("--verify", action="store_true")
    parser.add_argument("--close-timeout", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=20_000)
    parser.add_argument("--before", type=float, default=4.0)
    parser.add_argument("--down", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=5.0)
    args = parser.parse_args(argv)
    {"emit": child_emit, "official": child_official, "outage": child_outage}[args.kind](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
