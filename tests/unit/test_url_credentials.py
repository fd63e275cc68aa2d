"""A server URL holding credentials (``http://user:pass@host``) is refused when the
configuration is read: HTTP libraries would send them as Basic authentication in place of the
Bearer token, and print them in errors. The refusal names the setting and masks them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from simvue_otel._internal.client import SimvueClient
from simvue_otel._internal.config import resolve_config
from simvue_otel._internal.errors import ConfigurationError

SECRET = "pa55-w0rd-9f3e"

CREDENTIAL_URLS = [
    f"http://alice:{SECRET}@127.0.0.1:8765",
    f"https://alice:{SECRET}@simvue.example/api",
    f"http://alice:{SECRET}@[::1]:8765/",
    f"alice:{SECRET}@simvue.example",
    f"http://{SECRET}@127.0.0.1:8765?x=1",
]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_credentials_in_simvue_url_are_refused_without_echoing_them(
    tmp_path: Path, url: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_config(
            environ={"SIMVUE_URL": url, "SIMVUE_TOKEN": "t"}, cwd=tmp_path, home=tmp_path
        )
    message = str(caught.value)
    assert "SIMVUE_URL holds a user name or password" in message, message
    assert SECRET not in message and "alice" not in message, message
    assert "***@" in message


def test_credentials_are_refused_wherever_the_url_comes_from(tmp_path: Path) -> None:
    url = f"http://alice:{SECRET}@127.0.0.1:8765"
    with pytest.raises(ConfigurationError, match="the server URL given holds") as given:
        resolve_config(url, "t", cwd=tmp_path, home=tmp_path, environ={})
    (tmp_path / "simvue.toml").write_text(f'[server]\nurl = "{url}"\ntoken = "t"\n')
    with pytest.raises(ConfigurationError, match=r"\[server\] url in .*simvue.toml") as filed:
        resolve_config(cwd=tmp_path, home=tmp_path, environ={})
    with pytest.raises(ConfigurationError) as direct:
        SimvueClient(url, "t")
    for caught in (given, filed, direct):
        assert SECRET not in str(caught.value) and "alice" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8765",
        "https://simvue.example/api",
        "http://simvue.example/path/@not-a-user",
        "http://simvue.example/?next=a@b",
        "http://[::1]:8765",
    ],
)
def test_urls_without_credentials_are_taken(tmp_path: Path, url: str) -> None:
    config = resolve_config(
        environ={"SIMVUE_URL": url, "SIMVUE_TOKEN": "t"}, cwd=tmp_path, home=tmp_path
    )
    assert config.url is not None and "***" not in config.url


def test_send_with_credentials_in_the_url_stops_before_sending(tmp_path: Path) -> None:
    """`simvue-otel send` exits 2 with the reason, before any request (a listener on the
    URL's port would have been sent the password as Basic authentication)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)
        port = listener.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SIMVUE_", "OTEL_"))}
        env.update(
            SIMVUE_URL=f"http://alice:{SECRET}@127.0.0.1:{port}",
            SIMVUE_TOKEN="a-token",
            SIMVUE_OFFLINE_DIRECTORY=str(tmp_path / "offline"),
        )
        done = subprocess.run(
            [sys.executable, "-m", "simvue_otel", "send"],
            env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        with pytest.raises(OSError):  # nothing ever connected
            listener.accept()
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "SIMVUE_URL holds a user name or password" in done.stderr, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
