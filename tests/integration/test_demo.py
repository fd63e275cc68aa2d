"""`simvue-otel demo --exit`, the README's main job, run as a newcomer runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import requests

from tests.helpers import free_port, in_foreground, start_server, stop_server


def test_demo_records_runs_three_ways_and_prints_their_pages(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env["HOME"] = str(tmp_path)
    port = free_port()
    db = tmp_path / "demo.db"
    done = subprocess.run(
        [sys.executable, "-m", "simvue_otel", "demo", "--exit", "--port", str(port),
         "--db", str(db)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    rows = [line.split() for line in out.splitlines() if re.match(r"^\S+\s+/demo/", line)]
    names = [r[0] for r in rows]
    assert names[0] == "heat-equation" and "mesh-service-demo" in names
    assert len(rows) == 5, out
    assert all(r[2] == "completed" for r in rows), out
    assert all(int(r[-1]) > 0 for r in rows), "every run has metric points"
    pages = re.findall(rf"http://127\.0\.0\.1:{port}/runs/\w+", out)
    assert len(pages) == 5
    assert re.search(rf"http://127\.0\.0\.1:{port}/login\?code=\S+", out)
    assert db.exists()

    # The simulation ran long enough for its resource metrics (sampled every second) to be
    # lines on its page: several points each, over a few seconds.
    user = re.search(r"^API: .* --user (\S+?)\)?$", out, re.M)
    assert user, out
    server = start_server(tmp_path / "after", db=db, first_token="none: a restarted server")
    try:
        headers = server.headers(user.group(1))
        api = server.api
        run = requests.get(
            f"{api}/runs",
            params={"filters": json.dumps(["name == heat-equation"])},
            headers=headers,
            timeout=30,
        ).json()["data"][0]
        resources = sorted(m for m in run["metrics"] if m.startswith("resources/"))
        assert resources == ["resources/cpu.usage.memory", "resources/cpu.usage.percentage"]
        points = requests.get(
            f"{api}/metrics",
            params={"runs": json.dumps([run["id"]]), "metrics": json.dumps(resources)},
            headers=headers,
            timeout=30,
        ).json()[run["id"]]
        for name in resources:
            times = [p["time"] for p in points[name]]
            assert len(times) >= 3, (name, times)
            assert max(times) - min(times) >= 1.5, (name, times)
    finally:
        stop_server(server)


def test_demo_refuses_a_port_it_cannot_use(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env["HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "simvue_otel", "demo", "--exit", "--port", "0"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "simvue-otel demo: --port must be between 1 and 65535, not 0"
    assert done.stdout == ""


def test_demo_keeps_serving_until_interrupted(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env["HOME"] = str(tmp_path)
    port = free_port()
    proc = subprocess.Popen(  # as a shell starts it: Ctrl-C reaches it whatever the suite ignores
        in_foreground([sys.executable, "-m", "simvue_otel", "demo", "--port", str(port)]),
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        api_lines = []
        for line in proc.stdout:
            if line.startswith("API: "):
                api_lines.append(line.removeprefix("API: ").strip())
            if line.startswith("Serving"):
                break
        else:
            raise AssertionError(proc.stderr.read() if proc.stderr else "no output")
        login = requests.get(f"http://127.0.0.1:{port}/login", timeout=10)
        assert login.status_code == 200 and "Sign in" in login.text

        # The API line works when pasted into a shell elsewhere, while the demo serves.
        assert len(api_lines) == 1 and api_lines[0].startswith("export SIMVUE_URL="), api_lines
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        pasted = subprocess.run(
            ["/bin/sh", "-c", api_lines[0] + '\nprintf "%s %s" "$SIMVUE_URL" "$SIMVUE_TOKEN"'],
            env=env, cwd=elsewhere, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert pasted.returncode == 0, pasted.stderr
        url, token = pasted.stdout.split(" ")
        assert url == f"http://127.0.0.1:{port}"
        whoami = requests.get(
            f"{url}/api/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert whoami.status_code == 200, whoami.text
        proc.send_signal(2)  # Ctrl-C
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
