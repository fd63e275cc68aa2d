"""A real `simvue-otel server` and `simvue-otel bridge`, each started as a subprocess on a free
loopback port, and the means to wait for them, mint tokens and stop them."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.helpers.polling import poll
from tests.helpers.ports import free_port


@dataclass
class LocalServer:
    """A running `simvue-otel server` subprocess and the means to mint tokens for it."""

    url: str
    db: Path
    token: str
    process: subprocess.Popen[bytes]
    log: Path
    _tokens: dict[tuple[str, str | None], str] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return self.url + "/api"

    def token_for(self, user: str, tenant: str | None = None) -> str:
        """A bearer token for `user` (created if needed), minted by the CLI as a user would."""
        key = (user, tenant)
        if key not in self._tokens:
            cmd = [*SERVER_CMD, "token", "--db", str(self.db), "--user", user]
            if tenant:
                cmd += ["--tenant", tenant]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)
            self._tokens[key] = out.stdout.strip().splitlines()[-1]
        return self._tokens[key]

    def headers(self, user: str = "", tenant: str | None = None) -> dict[str, str]:
        token = self.token_for(user, tenant) if user else self.token
        return {"Authorization": f"Bearer {token}"}


SERVER_CMD = [sys.executable, "-m", "simvue_otel", "server"]


def start_server(
    tmp: Path,
    *,
    port: int | None = None,
    db: Path | None = None,
    extra: list[str] | None = None,
    first_token: str | None = None,
) -> LocalServer:
    """Start a server and wait until it answers `/health`; on a new database the first user's
    token is read from the server's own startup output, exactly as a person would copy it
    (a restarted server prints none: pass the token it printed before as `first_token`)."""
    tmp.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    db = db or tmp / "simvue.db"
    log = tmp / f"server-{port}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [*SERVER_CMD, "--host", "127.0.0.1", "--port", str(port), "--db", str(db), *(extra or [])]
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, log, "server")
    token = first_token or token_from_output(log)
    return LocalServer(url=url, db=db, token=token, process=proc, log=log)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Wait until a started server or bridge answers ``/health`` (its log on failure)."""

    def health() -> int:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log.read_text()}")
        return requests.get(url + "/health", timeout=1).status_code

    answer = poll(
        health, lambda code: code == 200, 60, interval=0.1, ignoring=(requests.ConnectionError,)
    )
    if answer != 200:
        proc.kill()
        raise RuntimeError(f"{what} did not start:\n{log.read_text()}")


def token_from_output(log: Path) -> str:
    """The token the server prints on its first start (`export SIMVUE_TOKEN=...`)."""

    def printed() -> str | None:
        for line in log.read_text().splitlines():
            text = line.strip().removeprefix("export ").strip()
            if text.startswith("SIMVUE_TOKEN="):
                return text.split("=", 1)[1]
        return None

    token: str | None = poll(printed, lambda found: found is not None, 60, interval=0.05)
    if token is None:
        raise RuntimeError(f"server printed no token:\n{log.read_text()}")
    return token


def stop_server(server: LocalServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@dataclass
class Bridge:
    """A running `simvue-otel bridge` subprocess writing to a local server."""

    url: str
    grpc: str
    process: subprocess.Popen[bytes]
    log: Path
    offline: Path
    token: str | None = None

    def stop(self, timeout: float = 30) -> int:
        self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def start_bridge(
    tmp: Path,
    server: LocalServer,
    *,
    token: str | None = None,
    extra: list[str] | None = None,
    env_extra: dict[str, str] | None = None,
    ports: tuple[int, int] | None = None,
) -> Bridge:
    """Start `simvue-otel bridge` on free loopback ports (or on ``ports``, HTTP and gRPC: a
    bridge restarted where its clients send) and wait until it answers."""
    tmp.mkdir(parents=True, exist_ok=True)
    http_port, grpc_port = ports or (free_port(), free_port())
    log = tmp / f"bridge-{http_port}.log"
    offline = tmp / "bridge-offline"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(
        PYTHONUNBUFFERED="1",
        SIMVUE_URL=server.url,
        SIMVUE_TOKEN=server.token,
        SIMVUE_OFFLINE_DIRECTORY=str(offline),
        **(env_extra or {}),
    )
    if token:
        env["SIMVUE_OTEL_BRIDGE_TOKEN"] = token
    cmd = [
        sys.executable, "-m", "simvue_otel", "bridge",
        "--listen", f"127.0.0.1:{http_port}", "--grpc-listen", f"127.0.0.1:{grpc_port}",
        *(extra or []),
    ]  # fmt: skip
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    url = f"http://127.0.0.1:{http_port}"
    wait_healthy(url, proc, log, "bridge")
    return Bridge(url, f"127.0.0.1:{grpc_port}", proc, log, offline, token)
