"""Benchmark of the OTLP bridge's ingestion, against its own local server (127.0.0.1 only).

    .venv/bin/python bench/bench_bridge.py [--quick]

Senders (separate processes) POST pre-built OTLP/HTTP protobuf bodies to one or two
``simvue-otel bridge`` processes as fast as the bridges answer; the bridges write to one local
``simvue-otel server``. Measured, in data points per second:

1. acceptance: points in 200 replies / wall time of the sending phase;
2. drain: time after the last reply until the server holds every point, and the end-to-end
   rate (points / time from the first request to the last point on the server);
3. the same with two bridge replicas (each sender targets one), and the ratio 2/1;
4. back-pressure: a bridge with a tiny ``--max-backlog`` answers 503 with Retry-After; the
   senders wait and send again, and every point must still arrive exactly once.

Every point is then counted on the server (each metric of each run, each step once). The
script exits 1 if any point is missing or doubled, or on any other problem it saw. Senders are
this script run as children (fresh interpreters); see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench_export import (
    LOCAL_ENV,
    Server,
    dir_bytes,
    free_port,
    problems_in,
    report_problems,
    spool_pending,
    table,
    tail,
)

SCRIPT = Path(__file__).resolve()
RESULT_PREFIX = "RESULT "
NAMES = ("a", "b", "c", "d", "e")  # the metric names of every point set
FOLDER = "/bench-bridge"
PROTOBUF = {"Content-Type": "application/x-protobuf"}


# -- sizes ----------------------------------------------------------------------------------


def plan(quick: bool) -> dict[str, Any]:
    """Per sender: ``runs`` runs, ``*_requests`` requests in all (round-robin over its runs).
    Each configuration (1 or 2 replicas) runs ``repeats`` times, alternating."""
    if quick:
        return {
            "senders": 2,
            "runs": 2,
            "repeats": 1,
            "logs_requests": 10,  # x 1,000 records x 5 values
            "gauge_requests": 20,  # x 1,000 gauge data points (200 times x 5 gauges)
            "pressure_requests": 4,
            "pressure_backlog": 2,
            "drain_timeout": 120.0,
        }
    return {
        "senders": 2,
        "runs": 4,
        "repeats": 3,
        "logs_requests": 120,
        "gauge_requests": 240,
        "pressure_requests": 4,
        "pressure_backlog": 2,
        "drain_timeout": 180.0,
    }


RECORDS_PER_LOGS_REQUEST = 1_000  # simvue.metrics log records, each of len(NAMES) values
TIMES_PER_GAUGE_REQUEST = 200  # each time: one data point of each of len(NAMES) gauges


def points_per_request(signal: str) -> int:
    per = RECORDS_PER_LOGS_REQUEST if signal == "logs" else TIMES_PER_GAUGE_REQUEST
    return per * len(NAMES)


# -- helpers --------------------------------------------------------------------------------


def local_session() -> Any:
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxy: everything stays on 127.0.0.1
    return session


def child_result(data: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(data), flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bridge:
    """A ``python -m simvue_otel bridge`` subprocess on 127.0.0.1, writing to one server."""

    def __init__(self, workdir: Path, url: str, token: str, extra: list[str] | None = None):
        self.workdir = workdir
        self.server_url = url
        self.server_token = token
        self.extra = extra or []
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.offline = workdir / "bridge-offline"
        self.spool = self.offline / "otel-spool"
        self.log = workdir / f"bridge-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.session = local_session()
        self.exit_code: int | None = None
        self.stop_s = 0.0

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
        env.update(
            PYTHONUNBUFFERED="1",
            SIMVUE_URL=self.server_url,
            SIMVUE_TOKEN=self.server_token,
            SIMVUE_OFFLINE_DIRECTORY=str(self.offline),
            **LOCAL_ENV,
        )
        cmd = [sys.executable, "-m", "simvue_otel", "bridge"]
        cmd += ["--listen", f"127.0.0.1:{self.port}"]
        cmd += ["--grpc-listen", f"127.0.0.1:{self.grpc_port}", *self.extra]
        with self.log.open("wb") as fh:
            self.process = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
            )
        deadline = time.monotonic() + timeout
        while self.health() is None:
            if self.process.poll() is not None:
                raise RuntimeError(f"bridge exited early:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bridge did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def health(self) -> dict[str, Any] | None:
        import requests

        try:
            reply = self.session.get(self.url + "/health", timeout=2)
        except requests.RequestException:
            return None
        return dict(reply.json()) if reply.status_code == 200 else None

    def stop(self, timeout: float = 120.0) -> int | None:
        proc, self.process = self.process, None
        if proc is None:
            return self.exit_code
        start = time.monotonic()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.stop_s = time.monotonic() - start
        self.exit_code = proc.returncode
        self.session.close()
        return self.exit_code

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace").replace(str(self.workdir), "<bridge dir>")
        except OSError:
            return ""


# -- child: a sender ------------------------------------------------------------------------


def resource_attributes(target: Any, key: str, name: str) -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    for attr, value in (
        ("simvue.run.key", key),
        ("simvue.run.name", name),
        ("simvue.run.folder", FOLDER),
        ("service.name", "bench-bridge"),
    ):
        target.add(key=attr, value=AnyValue(string_value=value))


def logs_body(key: str, name: str, first: int, t0_ns: int) -> bytes:
    """One run's ``simvue.metrics`` records for steps first..first+999; ``a`` = the step."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_attributes(resource_logs.resource.attributes, key, name)
    scope = resource_logs.scope_logs.add()
    scope.scope.name = "bench-bridge"
    for step in range(first, first + RECORDS_PER_LOGS_REQUEST):
        record = scope.log_records.add()
        record.time_unix_nano = t0_ns + step * 1_000_000
        record.observed_time_unix_nano = record.time_unix_nano
        record.severity_number = 9
        record.event_name = "simvue.metrics"
        values = record.body.kvlist_value.values
        for j, metric in enumerate(NAMES):
            entry = values.add(key=metric)
            entry.value.double_value = float(step) + j * 0.25
        attr = record.attributes.add(key="simvue.metrics.step")
        attr.value.int_value = step
        attr = record.attributes.add(key="simvue.metrics.time")
        attr.value.double_value = step * 0.001
    return bytes(request.SerializeToString())


def gauge_body(key: str, name: str, first: int, t0_ns: int) -> bytes:
    """One run's gauges ``a``..``e`` at 200 distinct times; the value of ``a`` is the time's
    index (first..first+199), so the server's points can be checked one by one."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_attributes(resource_metrics.resource.attributes, key, name)
    scope = resource_metrics.scope_metrics.add()
    scope.scope.name = "bench-bridge"
    for j, metric_name in enumerate(NAMES):
        metric = scope.metrics.add()
        metric.name = metric_name
        points = metric.gauge.data_points
        for index in range(first, first + TIMES_PER_GAUGE_REQUEST):
            point = points.add()
            point.time_unix_nano = t0_ns + index * 1_000_000  # one distinct ms per time
            point.as_double = float(index) + j * 0.25
    return bytes(request.SerializeToString())


def rejected_in(signal: str, content: bytes) -> int:
    """Items a 200 reply says were refused (OTLP partial success)."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceResponse,
    )

    if not content:
        return 0
    if signal == "logs":
        reply = ExportLogsServiceResponse.FromString(content)
        return int(reply.partial_success.rejected_log_records) * len(NAMES)
    answer = ExportMetricsServiceResponse.FromString(content)
    return int(answer.partial_success.rejected_data_points)


def child_send(args: argparse.Namespace) -> None:
    import requests

    keys: list[str] = json.loads(args.keys)
    signal = args.signal
    per = RECORDS_PER_LOGS_REQUEST if signal == "logs" else TIMES_PER_GAUGE_REQUEST
    make = logs_body if signal == "logs" else gauge_body
    # Timestamps one ms apart per step, ending now (so none lies in the future).
    per_run = -(-args.requests // len(keys))
    t0_ns = time.time_ns() - per_run * per * 1_000_000 - 10**9

    build_start = time.perf_counter()
    bodies: list[bytes] = []
    next_first = dict.fromkeys(keys, 0)
    for i in range(args.requests):
        key = keys[i % len(keys)]
        bodies.append(make(key, f"bench-{key[:8]}", next_first[key], t0_ns))
        next_first[key] += per
    build_s = time.perf_counter() - build_start
    print(f"READY {build_s:.2f}", flush=True)
    if sys.stdin.readline().strip() != "go":
        return

    session = local_session()
    url = f"{args.url}/v1/{signal}"
    points = per * len(NAMES)
    accepted = rejected = retries_503 = wait_503_ms = errors = 0
    other: dict[str, int] = {}
    error_kinds: dict[str, int] = {}
    latencies: list[float] = []
    cpu0 = time.process_time()
    start = time.monotonic()
    for body in bodies:
        attempts = 0
        while True:
            attempts += 1
            sent = time.perf_counter()
            try:
                reply = session.post(url, data=body, headers=PROTOBUF, timeout=120)
            except requests.RequestException as exc:
                errors += 1
                kind = f"{type(exc).__name__}: {str(exc)[:160]}"
                error_kinds[kind] = error_kinds.get(kind, 0) + 1
                if attempts > 5:
                    other["gave up after 5 connection errors"] = 1 + other.get("gave up", 0)
                    break
                time.sleep(0.5)
                continue
            if reply.status_code == 503:
                retries_503 += 1
                wait = float(reply.headers.get("Retry-After") or 1)
                wait_503_ms += int(wait * 1000)
                time.sleep(wait)
                continue
            latencies.append(time.perf_counter() - sent)
            if reply.status_code == 200:
                refused = rejected_in(signal, reply.content)
                accepted += points - refused
                rejected += refused
            else:
                code = str(reply.status_code)
                other[code] = other.get(code, 0) + 1
            break
    end = time.monotonic()
    child_result(
        {
            "requests": len(bodies),
            "body_bytes": sum(len(b) for b in bodies),
            "build_s": build_s,
            "start": start,
            "end": end,
            "accepted": accepted,
            "rejected": rejected,
            "retries_503": retries_503,
            "wait_503_s": wait_503_ms / 1000,
            "errors": errors,
            "error_kinds": error_kinds,
            "other": other,
            "cpu_s": time.process_time() - cpu0,
            "lat_p50_ms": pct(latencies, 0.5) * 1e3,
            "lat_p99_ms": pct(latencies, 0.99) * 1e3,
            "lat_max_ms": max(latencies, default=0.0) * 1e3,
        }
    )


# -- the orchestrator: one phase ------------------------------------------------------------


class Sampler(threading.Thread):
    """Every 0.25 s: each bridge's backlog (from /health) and spool size on disk."""

    def __init__(self, bridges: list[Bridge]) -> None:
        super().__init__(daemon=True)
        self.bridges = bridges
        self.stop_event = threading.Event()
        self.peak_backlog = 0
        self.peak_spool = 0
        self.backed_up = 0  # samples in which some bridge said it was backed up

    def run(self) -> None:
        while not self.stop_event.is_set():
            spool = 0
            for bridge in self.bridges:
                health = bridge.health() or {}
                self.peak_backlog = max(self.peak_backlog, int(health.get("backlog", 0)))
                self.backed_up += bool(health.get("backed_up"))
                spool += dir_bytes(bridge.spool)
            self.peak_spool = max(self.peak_spool, spool)
            self.stop_event.wait(0.25)


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return float(times.user + times.system)


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core)."""
    import psutil

    times = psutil.cpu_times()
    # guest time is already inside user time; steal, idle and iowait are not ours to count.
    fields = ("user", "nice", "system", "irq", "softirq")
    return float(sum(getattr(times, f, 0.0) for f in fields))


def snapshot(watched: dict[str, int]) -> dict[str, float]:
    out = {name: cpu_seconds(pid) for name, pid in watched.items()}
    out["bench script"] = cpu_seconds(os.getpid())
    out["machine"] = machine_busy()
    return out


def start_senders(
    signal: str, bridges: list[Bridge], keys: list[list[str]], requests: int, tmp: Path
) -> list[tuple[subprocess.Popen[str], Path]]:
    senders = []
    for i, sender_keys in enumerate(keys):
        target = bridges[i % len(bridges)]
        cmd = [sys.executable, str(SCRIPT), "--child", "send", "--signal", signal]
        cmd += ["--url", target.url, "--requests", str(requests)]
        cmd += ["--keys", json.dumps(sender_keys)]
        err = tmp / f"sender-{i}.err"
        with err.open("w") as fh:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=fh,
                text=True,
                env=dict(os.environ, **LOCAL_ENV),
            )
        senders.append((proc, err))
    return senders


def await_ready(proc: subprocess.Popen[str], err: Path) -> float:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"a sender failed while building its bodies:\n{tail(err.read_text())}")
    return float(line.split()[1])


def collect(proc: subprocess.Popen[str], err: Path, timeout: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise RuntimeError(f"a sender hung: killed after {timeout:.0f} s") from None
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_PREFIX):
            data: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            data["stderr"] = err.read_text()
            return data
    raise RuntimeError(f"a sender failed (exit {proc.returncode}):\n{tail(err.read_text())}")


def merge_counts(parts: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for key, value in part.items():
            out[key] = out.get(key, 0) + value
    return out


def expected_per_run(signal: str, requests: int, runs: int) -> int:
    """Points of one metric name in one run."""
    per = RECORDS_PER_LOGS_REQUEST if signal == "logs" else TIMES_PER_GAUGE_REQUEST
    return per * (requests // runs)


def counts_on_server(client: Any, ids: dict[str, str], keys: list[str]) -> dict[str, int]:
    """Per run key: the fewest points the server holds of any metric name (from the run's
    metric summary); finds the runs' ids as they appear."""
    out: dict[str, int] = {}
    for key in keys:
        if key not in ids:
            run = client.find_run_by_key(key)
            if run is None:
                out[key] = 0
                continue
            ids[key] = run["id"]
        summary = client.get_run(ids[key]).get("metrics") or {}
        out[key] = min(int((summary.get(n) or {}).get("count", 0)) for n in NAMES)
    return out


def verify_exact(
    client: Any, ids: dict[str, str], keys: list[str], signal: str, expected: int
) -> dict[str, Any]:
    """Every metric of every run, point by point: missing and doubled counts."""
    missing = doubled = wrong = 0
    details: list[str] = []
    for key in keys:
        if key not in ids:
            run = client.find_run_by_key(key)
            if run is None:
                missing += expected * len(NAMES)
                details.append(f"run {key[:8]}: not on the server")
                continue
            ids[key] = run["id"]
        series = client.get_metrics(ids[key], list(NAMES))
        for j, name in enumerate(NAMES):
            points = series.get(name, [])
            if signal == "logs":
                # The sender set the step: each step 0..expected-1 once, value step + j/4.
                seen = [int(p["step"]) for p in points]
                wrong += sum(1 for p in points if float(p["value"]) != int(p["step"]) + j * 0.25)
            else:
                # The bridge numbers gauge exports; the value carries the time's index.
                seen = [round(float(p["value"]) - j * 0.25) for p in points]
            unique = set(seen)
            lost = len(set(range(expected)) - unique)
            twice = len(seen) - len(unique)
            stray = len(unique - set(range(expected)))
            missing += lost
            doubled += twice
            wrong += stray
            if lost or twice or stray:
                details.append(
                    f"run {key[:8]} metric {name}: {len(seen)} points, {lost} missing, "
                    f"{twice} doubled, {stray} unexpected"
                )
    return {"missing": missing, "doubled": doubled, "wrong": wrong, "details": details[:10]}


def run_phase(
    label: str,
    signal: str,
    replicas: int,
    requests: int,
    sizes: dict[str, Any],
    tmp: Path,
    bridge_extra: list[str] | None = None,
) -> dict[str, Any]:
    from simvue_otel._internal.client import SimvueClient

    work = tmp / label
    server = Server(work / "server")
    bridges: list[Bridge] = []
    senders: list[tuple[subprocess.Popen[str], Path]] = []
    result: dict[str, Any] = {
        "label": label,
        "signal": signal,
        "replicas": replicas,
        "problems": [],
    }
    problems: list[str] = result["problems"]
    n_senders, n_runs = sizes["senders"], sizes["runs"]
    if requests % n_runs:
        raise ValueError(f"{requests} requests do not split evenly over {n_runs} runs")
    keys = [[str(uuid.uuid4()) for _ in range(n_runs)] for _ in range(n_senders)]
    all_keys = [k for group in keys for k in group]
    expected = expected_per_run(signal, requests, n_runs)
    total = expected * len(NAMES) * len(all_keys)
    result["total_points"] = total
    sampler = None
    try:
        server.start()
        token = server.token()
        for r in range(replicas):
            bridge = Bridge(work / f"bridge-{r}", server.url, token, bridge_extra)
            bridge.start()
            bridges.append(bridge)
        senders = start_senders(signal, bridges, keys, requests, work)
        result["build_s"] = max(await_ready(p, e) for p, e in senders)

        watched = {"server": server.process.pid if server.process else 0}
        watched.update({f"bridge {i}": b.process.pid for i, b in enumerate(bridges) if b.process})
        cpu_go = snapshot(watched)
        sampler = Sampler(bridges)
        sampler.start()
        for proc, _ in senders:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        sent = [collect(p, e, timeout=300) for p, e in senders]
        senders = []
        cpu_sent = snapshot(watched)
        t_first = min(s["start"] for s in sent)
        t_last = max(s["end"] for s in sent)
        send_s = t_last - t_first
        accepted = sum(s["accepted"] for s in sent)
        result.update(
            send_s=send_s,
            accepted=accepted,
            accept_rate=accepted / send_s if send_s > 0 else 0.0,
            requests=sum(s["requests"] for s in sent),
            body_mib=sum(s["body_bytes"] for s in sent) / 2**20,
            rejected=sum(s["rejected"] for s in sent),
            retries_503=sum(s["retries_503"] for s in sent),
            wait_503_s=sum(s["wait_503_s"] for s in sent),
            errors=sum(s["errors"] for s in sent),
            error_kinds=merge_counts(s["error_kinds"] for s in sent),
            lat_p50_ms=statistics.median(s["lat_p50_ms"] for s in sent),
            lat_p99_ms=max(s["lat_p99_ms"] for s in sent),
            lat_max_ms=max(s["lat_max_ms"] for s in sent),
            sender_cpu_s=sum(s["cpu_s"] for s in sent),
            per_sender=[s["accepted"] / (s["end"] - s["start"]) for s in sent],
        )
        for i, s in enumerate(sent):
            if s["other"]:
                problems.append(f"sender {i}: replies other than 200/503: {s['other']}")
            if s["rejected"]:
                problems.append(f"sender {i}: {s['rejected']:,} points refused (partial success)")
            problems += [f"sender {i}: {p}" for p in problems_in(s["stderr"])]
        if accepted != total:
            problems.append(f"{accepted:,} of {total:,} points accepted with 200")

        # Drain: until the server holds every point of every metric of every run.
        client = SimvueClient(server.url, token, timeout=120.0)
        ids: dict[str, str] = {}
        deadline = time.monotonic() + sizes["drain_timeout"]
        drained_at = None
        polls = 0
        held = 0
        while time.monotonic() < deadline:
            polls += 1
            counts = counts_on_server(client, ids, all_keys)
            held = sum(min(c, expected) for c in counts.values())
            if all(c >= expected for c in counts.values()):
                drained_at = time.monotonic()
                break
            time.sleep(0.25)
        sampler.stop_event.set()
        sampler.join(5)
        cpu_drained = snapshot(watched)
        result["polls"] = polls
        if drained_at is None:
            problems.append(
                f"not drained after {sizes['drain_timeout']:.0f} s: the server holds "
                f"{held * len(NAMES):,} of {total:,} points (counted on metric summaries)"
            )
        else:
            result["drain_s"] = drained_at - t_last
            result["e2e_s"] = drained_at - t_first
            result["e2e_rate"] = total / (drained_at - t_first)
        result["cpu_send"] = {k: cpu_sent[k] - cpu_go[k] for k in cpu_go}
        result["cpu_drain"] = {k: cpu_drained[k] - cpu_sent[k] for k in cpu_go}
        result["peak_backlog"] = sampler.peak_backlog
        result["peak_spool"] = sampler.peak_spool
        result["backed_up_samples"] = sampler.backed_up

        # Stop the bridges (each drains its sink), then count every point exactly.
        for i, bridge in enumerate(bridges):
            code = bridge.stop()
            if code != 0:
                problems.append(f"bridge {i} exited with {code} after {bridge.stop_s:.1f} s")
            problems += [f"bridge {i}: {p}" for p in problems_in(bridge.log_text())]
            pending, _segments = spool_pending(bridge.spool)
            if pending:
                problems.append(f"bridge {i}: {pending:,} spooled bytes never uploaded")
        result["bridge_stop_s"] = max(b.stop_s for b in bridges)
        check = verify_exact(client, ids, all_keys, signal, expected)
        client.close()
        result["check"] = check
        if check["missing"] or check["doubled"] or check["wrong"]:
            problems.append(
                f"after drain: {check['missing']:,} points missing, {check['doubled']:,} "
                f"doubled, {check['wrong']:,} wrong or unexpected"
            )
            problems += ["  " + d for d in check["details"]]
    except Exception as exc:  # report, never hide
        problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        if sampler is not None:
            sampler.stop_event.set()
        for proc, _ in senders:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for bridge in bridges:
            bridge.stop(timeout=30)
        server.stop()
        problems += [f"server: {p}" for p in problems_in(server.log.read_text())]
    return result


# -- the report -----------------------------------------------------------------------------


def rate(value: float) -> str:
    return f"{value:,.0f} points/s"


def cpu_line(cpu: dict[str, float], seconds: float, senders: float | None = None) -> str:
    """Our processes' CPU seconds, the machine's, and what other processes took."""
    ours = {k: v for k, v in cpu.items() if k != "machine"}
    if senders is not None:
        ours["senders"] = senders
    parts = ", ".join(f"{name} {value:.1f}" for name, value in ours.items())
    mine = sum(ours.values())
    other = max(0.0, cpu["machine"] - mine)
    return (
        f"{parts} s in {seconds:.1f} s = {mine / seconds:.2f} cores; whole machine "
        f"{cpu['machine'] / seconds:.2f} cores busy (others {other / seconds:.2f})"
    )


def median_run(runs: list[dict[str, Any]], field: str) -> dict[str, Any]:
    """The repeat whose ``field`` is the median (the lower one of an even count)."""
    ordered = sorted(runs, key=lambda r: r[field])
    return ordered[(len(ordered) - 1) // 2]


def spread(values: list[float]) -> str:
    text = rate(statistics.median(values))
    if len(values) > 1:
        text += " (" + ", ".join(f"{v:,.0f}" for v in values) + ")"
    return text


def config_rows(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    done = [r for r in runs if "accept_rate" in r]
    if not done:
        return [("result", "none (see problems)")]
    r = median_run(done, "accept_rate")
    unit = "log records x 5 values" if r["signal"] == "logs" else "gauge data points"
    note = f"median of {len(done)}, each repeat in ()" if len(done) > 1 else "one run"
    rows = [
        (
            "each repeat sent",
            f"{r['requests']:,} requests x {points_per_request(r['signal']):,} points ({unit}) = "
            f"{r['total_points']:,} points, {r['body_mib']:.1f} MiB of protobuf",
        ),
        ("ACCEPTED (points in 200 replies / s)", f"{spread([x['accept_rate'] for x in done])}"),
        ("  sending phase", ", ".join(f"{x['send_s']:.2f} s" for x in done)),
    ]
    drained = [x for x in done if "e2e_rate" in x]
    if drained:
        rows += [
            ("  drain after the last reply", ", ".join(f"{x['drain_s']:.2f} s" for x in drained)),
            (
                "END-TO-END (first request to last point stored)",
                spread([x["e2e_rate"] for x in drained]),
            ),
        ]
    rows += [
        (f"median repeat ({note})", ""),
        ("  per sender", ", ".join(rate(x) for x in r["per_sender"])),
        (
            "  request latency",
            f"p50 {r['lat_p50_ms']:.0f} ms, p99 {r['lat_p99_ms']:.0f} ms, "
            f"max {r['lat_max_ms']:.0f} ms",
        ),
        ("  peak backlog / spool on disk", f"{r['peak_backlog']:,} batches / {fmt_mib(r)}"),
        ("  CPU while sending", cpu_line(r["cpu_send"], r["send_s"], r["sender_cpu_s"])),
    ]
    if "drain_s" in r:
        rows.append(("  CPU while draining", cpu_line(r["cpu_drain"], max(r["drain_s"], 1e-3))))
    rows.append(("  bridge shutdown (SIGTERM to exit)", f"{r.get('bridge_stop_s', 0):.1f} s"))
    rows += retry_rows(done)
    rows.append(("every point exactly once", check_text(done)))
    return rows


def retry_rows(runs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    retries = sum(x["retries_503"] for x in runs)
    waited = sum(x["wait_503_s"] for x in runs)
    errors = sum(x["errors"] for x in runs)
    return [
        ("503 answers, re-sent (all repeats)", f"{retries:,} (senders waited {waited:.0f} s)"),
        ("connection errors, re-sent", f"{errors:,}"),
    ]


def check_text(runs: list[dict[str, Any]]) -> str:
    checks = [x.get("check") for x in runs]
    if not all(checks):
        return "FAIL (not checked: see problems)"
    missing = sum(c["missing"] for c in checks if c)
    doubled = sum(c["doubled"] for c in checks if c)
    wrong = sum(c["wrong"] for c in checks if c)
    verdict = "PASS" if not (missing or doubled or wrong) else "FAIL"
    return f"{verdict} ({missing:,} missing, {doubled:,} doubled, {wrong:,} wrong)"


def pressure_rows(r: dict[str, Any], backlog: int) -> list[tuple[str, str]]:
    if "accept_rate" not in r:
        return [("result", "none (see problems)")]
    rows = [
        (
            "sent",
            f"{r['requests']:,} requests x {points_per_request('logs'):,} points = "
            f"{r['total_points']:,} points, bridge --max-backlog {backlog}",
        ),
        ("sending phase", f"{r['send_s']:.1f} s ({rate(r['accept_rate'])} accepted)"),
        ("peak backlog", f"{r['peak_backlog']:,} batches"),
    ]
    rows += retry_rows([r])
    if "drain_s" in r:
        rows.append(("drain after the last reply", f"{r['drain_s']:.2f} s"))
    rows.append(("every point exactly once", check_text([r])))
    return rows


def fmt_mib(r: dict[str, Any]) -> str:
    return f"{r['peak_spool'] / 2**20:,.1f} MiB"


def orchestrate(quick: bool) -> int:
    sizes = plan(quick)
    started = time.monotonic()
    cpus = os.cpu_count() or 1
    print(
        f"simvue-otel bridge benchmark ({'quick' if quick else 'full'}); {cpus} CPU(s), "
        f"Python {sys.version.split()[0]}; {sizes['senders']} sender processes, "
        f"{sizes['runs']} runs each, OTLP/HTTP protobuf; {sizes['repeats']} repeat(s)",
        flush=True,
    )
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    pressure: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="simvue-otel-bench-bridge-") as tmp_name:
        tmp = Path(tmp_name)
        for signal in ("logs", "metrics"):
            requests = sizes["logs_requests" if signal == "logs" else "gauge_requests"]
            for rep in range(sizes["repeats"]):
                for replicas in (1, 2):
                    label = f"{'logs' if signal == 'logs' else 'gauges'}-{replicas}r-{rep + 1}"
                    print(f"[{label}] {replicas} bridge replica(s)", flush=True)
                    res = run_phase(label, signal, replicas, requests, sizes, tmp)
                    results.setdefault((signal, replicas), []).append(res)
                    if "accept_rate" in res:
                        print(
                            f"    accepted {rate(res['accept_rate'])}, end-to-end "
                            f"{rate(res.get('e2e_rate', 0.0))}",
                            flush=True,
                        )
        print("[pressure] 1 bridge replica, tiny --max-backlog", flush=True)
        extra = ["--max-backlog", str(sizes["pressure_backlog"])]
        pressure = run_phase(
            "pressure", "logs", 1, sizes["pressure_requests"], sizes, tmp, bridge_extra=extra
        )

    report: list[str] = []
    titles = {
        ("logs", 1): "1. simvue.metrics log records (ExportLogsServiceRequest), ONE bridge",
        ("logs", 2): "2. simvue.metrics log records, TWO bridge replicas (one sender each)",
        ("metrics", 1): "3. OTel gauges (ExportMetricsServiceRequest), ONE bridge",
        ("metrics", 2): "4. OTel gauges, TWO bridge replicas (one sender each)",
    }
    for key, title in titles.items():
        report.append(table(title, config_rows(results[key])))
    report.append(
        table(
            "5. Back-pressure: 503 + Retry-After honoured, then re-sent",
            pressure_rows(pressure, sizes["pressure_backlog"]),
        )
    )

    rows: list[tuple[str, str]] = []
    for kind, signal in (("log records", "logs"), ("gauges", "metrics")):
        for what, field in (("accepted", "accept_rate"), ("end-to-end", "e2e_rate")):
            one = [r[field] for r in results[(signal, 1)] if field in r]
            two = [r[field] for r in results[(signal, 2)] if field in r]
            if one and two:
                a, b = statistics.median(one), statistics.median(two)
                rows.append(
                    (f"{kind}, {what}: 2 replicas / 1", f"{b / a:.2f}x ({rate(b)} / {rate(a)})")
                )
    if not rows:
        rows.append(("ratio", "no result"))
    report.append(table("6. Scaling with bridge replicas (medians)", rows))

    problems = [
        f"[{r['label']}] {p}" for runs in results.values() for r in runs for p in r["problems"]
    ]
    problems += [f"[pressure] {p}" for p in pressure.get("problems", [])]
    every = [r for runs in results.values() for r in runs] + ([pressure] if pressure else [])
    errors = merge_counts(r.get("error_kinds", {}) for r in every)
    print()
    print(
        f"Machine: {cpus} CPU(s), Python {sys.version.split()[0]}, {sys.platform}; "
        f"total bench time {time.monotonic() - started:.0f} s"
    )
    print()
    print("\n\n".join(report))
    print()
    print(
        f"Note: this machine has {cpus} CPU(s). The server, the bridge(s), the "
        f"{sizes['senders']} senders and\nthis script all share them, and so does whatever "
        "else runs here (the 'others' figures),\nso the replica ratio is bounded by CPU, not "
        "by the design: replicas share no state\n(each replica looks a run up before creating "
        "it), and each bridge is one Python process\n(one GIL), so on separate cores acceptance "
        "grows with the number of replicas\nuntil the one server is the limit. The end-to-end "
        "rate is bounded by the one server\nwhatever the number of replicas."
    )
    print()
    if errors:
        print("Connection errors seen by senders (each request was sent again):")
        for kind, count in errors.items():
            print(f"  {count} x {kind}")
        print()
    return report_problems(problems)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (under a minute)")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child = argparse.ArgumentParser(prog="bench_bridge.py --child")
        child.add_argument("kind", choices=["send"])
        child.add_argument("--signal", choices=["logs", "metrics"], required=True)
        child.add_argument("--url", required=True)
        child.add_argument("--requests", type=int, required=True)
        child.add_argument("--keys", required=True)
        child_send(child.parse_args(args.child))
        return 0
    return orchestrate(args.quick)


if __name__ == "__main__":
    sys.exit(main())
