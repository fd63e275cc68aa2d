"""`simvue-otel bridge` goes without a token only when every address it listens on is
loopback: a host name is resolved, so `127.anything.example` or a `localhost` the resolver
sends elsewhere needs a token like any other address.

Names are made to resolve where the test wants through a hosts file of the test's own,
bind-mounted over /etc/hosts in a private mount namespace (the test's processes alone see
it; no name is looked up anywhere else, and nothing listens beyond loopback). That needs
the privilege to mount, as the full-disk tests do: without it those tests are skipped, and
CI sets SIMVUE_OTEL_REQUIRE_TMPFS=1 to make that a failure.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from simvue_otel._internal.bridge import is_loopback, loopback_problem
from tests.helpers import free_port, wait_healthy

BRIDGE = [sys.executable, "-m", "simvue_otel", "bridge", "--no-grpc", "--mode", "offline"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"]
)
def test_loopback_addresses_and_names_are_loopback(host: str) -> None:
    assert loopback_problem(host) is None
    assert is_loopback(host)


@pytest.mark.parametrize(
    ("host", "said"),
    [
        ("0.0.0.0", "not a loopback address"),  # noqa: S104
        ("::", "not a loopback address"),
        ("192.0.2.7", "not a loopback address"),
        ("::ffff:192.0.2.7", "not a loopback address"),
        ("127.0.0.1.invalid", "cannot be resolved"),  # a name, not an address
        ("127.evil.invalid", "cannot be resolved"),
        ("", "cannot be resolved"),
    ],
)
def test_other_addresses_and_unresolvable_names_are_not(host: str, said: str) -> None:
    assert not is_loopback(host)
    problem = loopback_problem(host)
    assert problem is not None and said in problem


def _bridge_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
    env.update(PYTHONUNBUFFERED="1", SIMVUE_OFFLINE_DIRECTORY=str(tmp_path / "offline"))
    return env


def _with_hosts(tmp_path: Path, hosts: str, command: list[str]) -> list[str]:
    """``command`` run in a private mount namespace whose /etc/hosts is ``hosts`` (skips,
    or fails under SIMVUE_OTEL_REQUIRE_TMPFS, where that cannot be done)."""
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(hosts)
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts"],
        capture_output=True, text=True,
    )  # fmt: skip
    if probe.returncode != 0:
        reason = f"cannot give a process its own /etc/hosts here ({probe.stderr.strip()})"
        if os.environ.get("SIMVUE_OTEL_REQUIRE_TMPFS"):
            pytest.fail(reason)
        pytest.skip(reason)
    script = f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts && exec {shlex.join(command)}"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


@pytest.mark.parametrize("name", ["127.attacker.test", "localhost"])
def test_a_name_resolving_off_loopback_needs_a_token(tmp_path: Path, name: str) -> None:
    """`--listen 127.attacker.test:PORT` (or `localhost`), where that name resolves to a
    network address, is refused without a token, naming the address; nothing is bound."""
    port = free_port()
    hosts = f"192.0.2.7 {name}\n"
    done = subprocess.run(
        _with_hosts(tmp_path, hosts, [*BRIDGE, "--listen", f"{name}:{port}"]),
        env=_bridge_env(tmp_path), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert f"{name!r} resolves to 192.0.2.7, which is not a loopback address" in done.stderr
    assert "needs a bearer token" in done.stderr


def test_a_name_resolving_to_loopback_alone_needs_no_token(tmp_path: Path) -> None:
    """A name whose every address is loopback (IPv4 and IPv6) starts without a token."""
    port = free_port()
    hosts = "127.0.0.1 otlp.loopback.test\n::1 otlp.loopback.test\n"
    log = tmp_path / "bridge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _with_hosts(tmp_path, hosts, [*BRIDGE, "--listen", f"otlp.loopback.test:{port}"]),
            env=_bridge_env(tmp_path), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log, "bridge")
        assert "no token (listening on loopback only)" in log.read_text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
