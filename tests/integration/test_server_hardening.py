"""`simvue-otel server` against hostile and careless requests: each gets a quick 4xx naming
what is wrong, never a 500 or a stall, and leaves the server healthy for everyone else.

One test per row of the hardening issue's table, on a real server over loopback: oversized
and endless bodies, times and numbers the server could not store or format, quadratic
filters, NaN metadata, open redirects, sign-in links and sessions, revoked tokens, the
malformed values that used to answer 500, a run with 100,000 tags, and deep OTLP/JSON.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
import requests

from simvue_otel._internal import conventions as cv
from simvue_otel._internal.server.filters import FilterError, _binary
from simvue_otel._internal.server.store import Store
from tests.helpers import Bridge, LocalServer, cpu_seconds, start_server, stop_server

QUICK = 2.0
"""CPU seconds a refused request may cost (the server's, or this process's for the parser), with
a wide margin: they take milliseconds. CPU time, unlike wall-clock time, does not grow when a
busy machine makes the server wait for a core."""
RESPONSIVE = 0.5
"""Seconds other clients may wait for /api/version while a hostile request runs."""


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Watch:
    """Latencies of /api/version, asked every 20 ms by another user while something runs."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)


@contextmanager
def watching(server: LocalServer, user: str) -> Iterator[Watch]:
    """Poll /api/version as ``user`` in a thread for as long as the block runs."""
    headers = server.headers(user)
    watch = Watch()
    stop = threading.Event()

    def poll() -> None:
        with requests.Session() as http:
            while not stop.is_set():
                began = time.monotonic()
                try:
                    reply = http.get(f"{server.api}/version", headers=headers, timeout=30)
                    if reply.status_code != 200:
                        watch.failures.append(f"{reply.status_code} {reply.text[:200]}")
                except requests.RequestException as exc:
                    watch.failures.append(repr(exc))
                watch.latencies.append(time.monotonic() - began)
                stop.wait(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    time.sleep(0.1)  # a few answers before the hostile request
    try:
        yield watch
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not watch.failures, watch.failures[:3]
    assert watch.latencies, "the other client was never answered"


def _still_healthy(server: LocalServer, user: str = "bystander") -> None:
    """Other users are served as before: health, their run listing, the web view's index."""
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    for who in (user, ""):
        reply = requests.get(f"{server.api}/runs", headers=server.headers(who), timeout=30)
        assert reply.status_code == 200, reply.text[:500]


def _raw(
    server: LocalServer, method: str, path: str, body: str | bytes | None, user: str, **kw: Any
) -> requests.Response:
    """A request with a body sent as given (JSON with NaN, 1e400, lone surrogates...)."""
    data = body.encode() if isinstance(body, str) else body
    headers = {**server.headers(user), "Content-Type": "application/json"}
    return requests.request(
        method, f"{server.api}{path}", data=data, headers=headers, timeout=30, **kw
    )


def _assert_422_naming(reply: requests.Response, field_name: str) -> None:
    assert reply.status_code == 422, (reply.status_code, reply.text[:500])
    detail = reply.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    where = " ".join(".".join(str(p) for p in d["loc"]) for d in detail)
    assert field_name in where, (field_name, detail)
    assert all(d.get("msg") and d.get("type") for d in detail), detail


def _new_run(server: LocalServer, user: str, **body: Any) -> str:
    reply = requests.post(
        f"{server.api}/runs",
        json={"name": _unique("hard"), "folder": "/hardening", **body},
        headers=server.headers(user),
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


# -- bodies -------------------------------------------------------------------------------------


def _send_head(server: LocalServer, head: str) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head.encode())
    return sock


def _answer(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


@pytest.mark.parametrize("path", ["/login", "/api/runs"])
def test_a_huge_declared_body_is_refused_at_once(local_server: LocalServer, path: str) -> None:
    """400 MiB announced, unauthenticated: 413 before a byte of it is read."""
    with watching(local_server, "bystander") as watch:
        used = cpu_seconds(local_server.process)
        sock = _send_head(
            local_server,
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {400 * 2**20}\r\n\r\n",
        )
        with sock:
            sock.sendall(b"token=" + b"x" * 65536)
            answer = _answer(sock)
        cost = cpu_seconds(local_server.process) - used
    assert answer.startswith("HTTP/1.1 413"), answer[:300]
    assert cost < QUICK
    assert watch.worst < RESPONSIVE, watch.latencies
    _still_healthy(local_server)


@pytest.mark.parametrize("path", ["/login", "/api/runs"])
def test_an_endless_chunked_body_is_cut_off(local_server: LocalServer, path: str) -> None:
    """50 MB streamed without a length: counted as it arrives, refused past the limit, while
    other clients are served as usual."""
    limit = 16 * 1024 if path == "/login" else 64 * 2**20
    chunk = b"a" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with watching(local_server, "bystander") as watch:
        began = time.monotonic()
        sock = _send_head(
            local_server,
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            "Transfer-Encoding: chunked\r\n\r\n",
        )
        with sock:
            sent = 0
            with suppress(OSError):  # the server answered and closed: the rest is not taken
                while sent < 50 * 2**20 + limit:
                    sock.sendall(frame)
                    sent += len(chunk)
            if path == "/api/runs":  # 50 MB is under 64 MiB: end it, expect a refusal of JSON
                with suppress(OSError):
                    sock.sendall(b"0\r\n\r\n")
            answer = _answer(sock)
        took = time.monotonic() - began
    if path == "/login":
        assert answer.startswith("HTTP/1.1 413"), answer[:300]
    else:
        assert answer.startswith(("HTTP/1.1 401", "HTTP/1.1 413")), answer[:300]
    assert took < 30
    assert watch.worst < RESPONSIVE, sorted(watch.latencies)[-5:]
    _still_healthy(local_server)


def test_api_bodies_over_max_body_are_413_however_sent(tmp_path: Path) -> None:
    from tests.helpers import start_server, stop_server

    server = start_server(tmp_path, extra=["--max-body", "100000"])
    try:
        big = b'{"name": "x", "description": "' + b"d" * 200_000 + b'"}'

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 10_000):
                yield big[i : i + 10_000]

        for data in (big, chunks()):
            reply = requests.post(
                f"{server.api}/runs",
                data=data,
                headers={**server.headers(), "Content-Type": "application/json"},
                timeout=30,
            )
            assert reply.status_code == 413, reply.text[:300]
            assert "100000 bytes" in reply.json()["detail"]
        _still_healthy(server)
    finally:
        stop_server(server)


# -- times ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field_name", "value"),
    [
        ("started", "1e20"),
        ("started", "NaN"),
        ("started", "Infinity"),
        ("endtime", "-Infinity"),
        ("endtime", "1e400"),
        ("started", '"0001-01-01T00:00:00+14:00"'),
        ("started", str(2**64)),
    ],
)
def test_a_time_the_server_cannot_format_is_422_and_listings_stay_up(
    local_server: LocalServer, field_name: str, value: str
) -> None:
    user = "time-writer"
    reader = "time-reader"
    local_server.token_for(reader)  # same tenant: sees the writer's tenant-visible runs
    body = (
        f'{{"name": "{_unique("bad-time")}", "folder": "/hardening", '
        f'"visibility": {{"tenant": true}}, "{field_name}": {value}}}'
    )
    used = cpu_seconds(local_server.process)
    reply = _raw(local_server, "POST", "/runs", body, user)
    assert cpu_seconds(local_server.process) - used < QUICK
    _assert_422_naming(reply, field_name)

    run_id = _new_run(local_server, user, visibility={"tenant": True})
    reply = _raw(local_server, "PUT", f"/runs/{run_id}", f'{{"{field_name}": {value}}}', user)
    _assert_422_naming(reply, field_name)
    for who in (user, reader):
        reply = requests.get(
            f"{local_server.api}/runs",
            params={"filters": '["name == nothing-matches"]'},
            headers=local_server.headers(who),
            timeout=30,
        )
        assert reply.status_code == 200, reply.text[:300]
    _still_healthy(local_server)


def test_a_damaged_row_never_breaks_anyone_elses_listing(tmp_path: Path) -> None:
    """A row holding times no check would let in now (written by hand, or by an older
    version): its owner and everyone who can see it still get their listings."""
    from tests.helpers import start_server, stop_server

    server = start_server(tmp_path)
    try:
        bad = _new_run(server, "owner", visibility={"public": True})
        good = _new_run(server, "owner", visibility={"public": True})
        with sqlite3.connect(server.db) as db:
            (doc,) = db.execute("SELECT doc FROM runs WHERE id = ?", (bad,)).fetchone()
            doc = doc.replace('"started": ', '"started": 1e300, "was": ', 1)
            doc = doc.replace('"endtime": null', '"endtime": NaN', 1)
            db.execute("UPDATE runs SET doc = ?, created = 1e300 WHERE id = ?", (doc, bad))
        for who in ("owner", "someone-else"):
            reply = requests.get(f"{server.api}/runs", headers=server.headers(who), timeout=30)
            assert reply.status_code == 200, reply.text[:300]
            ids = {r["id"] for r in reply.json()["data"]}
            assert good in ids
        page = requests.get(f"{server.api}/runs/{bad}", headers=server.headers("owner"), timeout=30)
        assert page.status_code == 200, page.text[:300]
        assert page.json()["started"] is None
    finally:
        stop_server(server)


# -- filters --------------------------------------------------------------------------------------


def test_the_filter_parser_is_linear() -> None:
    """A megabyte of spaces inside one filter is parsed at once (the regular expressions
    this replaces took minutes on far less)."""
    began = time.process_time()
    assert _binary("name ==" + " " * 1_000_000 + "x") is not None
    assert _binary("name" + " " * 1_000_000) is None
    assert time.process_time() - began < QUICK


@pytest.mark.parametrize("size", [12_000, 60_000])
def test_a_long_filter_is_refused_quickly_and_stalls_no_one(
    local_server: LocalServer, size: int
) -> None:
    # Spaces inside the value: what made the old lazy patterns quadratic (15 KB: 2 s).
    hostile = '["name == a' + " " * size + 'x"]'
    with watching(local_server, "bystander") as watch:
        for path in ("/runs", "/folders", "/tags"):
            used = cpu_seconds(local_server.process)
            reply = requests.get(
                f"{local_server.api}{path}",
                params={"filters": hostile},
                headers=local_server.headers("filterer"),
                timeout=30,
            )
            assert cpu_seconds(local_server.process) - used < QUICK
            assert 400 <= reply.status_code < 500, reply.text[:300]
        session = _web_session(local_server, "filterer")
        used = cpu_seconds(local_server.process)
        page = session.get(f"{local_server.url}/", params={"tag": "a" + " " * size + "b"})
        assert cpu_seconds(local_server.process) - used < QUICK
        assert 200 <= page.status_code < 500
    assert watch.worst < RESPONSIVE, sorted(watch.latencies)[-5:]
    _still_healthy(local_server)


@pytest.mark.parametrize(
    "filters",
    [
        '["' + "a." * 5000 + 'b == 1"]',
        "[" * 5000 + "]" * 5000,
        '["name == 1"' + ', "starred"' * 100 + "]",
        '["' + "x" * 5000 + '"]',
        "1" * 5000,
    ],
)
def test_filters_that_cannot_be_parsed_are_400(local_server: LocalServer, filters: str) -> None:
    reply = requests.get(
        f"{local_server.api}/runs",
        params={"filters": filters},
        headers=local_server.headers("filterer"),
        timeout=30,
    )
    assert reply.status_code == 400, reply.text[:300]
    assert isinstance(reply.json()["detail"], str)


def test_filter_errors_carry_the_grammar() -> None:
    with pytest.raises(FilterError):
        from simvue_otel._internal.server.filters import parse_filters

        parse_filters('["name =="]')


# -- metadata and tags ----------------------------------------------------------------------------


def test_nan_metadata_does_not_break_tag_deletion(local_server: LocalServer) -> None:
    user = _unique("nan-tags")
    tag = _unique("t")
    body = (
        f'{{"name": "{_unique("nan")}", "folder": "/hardening", "tags": ["{tag}"], '
        '"metadata": {"a": NaN, "b": Infinity, "c": -Infinity}}'
    )
    reply = _raw(local_server, "POST", "/runs", body, user)
    assert reply.status_code == 200, reply.text
    run_id = reply.json()["id"]
    tags = requests.get(
        f"{local_server.api}/tags", headers=local_server.headers(user), timeout=30
    ).json()["data"]
    (tag_id,) = [t["id"] for t in tags if t["name"] == tag]
    used = cpu_seconds(local_server.process)
    reply = requests.delete(
        f"{local_server.api}/tags/{tag_id}", headers=local_server.headers(user), timeout=30
    )
    assert cpu_seconds(local_server.process) - used < QUICK
    assert reply.status_code == 200, reply.text
    run = requests.get(
        f"{local_server.api}/runs/{run_id}", headers=local_server.headers(user), timeout=30
    ).json()
    assert run["tags"] == []
    _still_healthy(local_server, user)


# -- the web view's sign-in -----------------------------------------------------------------------


def _csrf(session: requests.Session, server: LocalServer) -> str:
    page = session.get(f"{server.url}/login", timeout=30)
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


def _web_session(server: LocalServer, user: str) -> requests.Session:
    """A browser-like session signed in with ``user``'s token through the form."""
    session = requests.Session()
    csrf = _csrf(session, server)
    reply = session.post(
        f"{server.url}/login",
        data={"token": server.token_for(user), "next": "/", "csrf": csrf},
        allow_redirects=False,
        timeout=30,
    )
    assert reply.status_code == 303, reply.text[:500]
    return session


@pytest.mark.parametrize(
    "target",
    ["//evil.example/", "/\\evil.example/", "https://evil.example/", "/\t/evil.example", "evil"],
)
def test_sign_in_redirects_only_to_local_paths(local_server: LocalServer, target: str) -> None:
    session = requests.Session()
    csrf = _csrf(session, local_server)
    reply = session.post(
        f"{local_server.url}/login",
        data={"token": local_server.token_for("web-user"), "next": target, "csrf": csrf},
        allow_redirects=False,
        timeout=30,
    )
    assert reply.status_code == 303
    assert reply.headers["location"] == "/"
    assert session.get(f"{local_server.url}/", timeout=30).status_code == 200


def test_sign_in_keeps_a_local_next(local_server: LocalServer) -> None:
    session = requests.Session()
    csrf = _csrf(session, local_server)
    reply = session.post(
        f"{local_server.url}/login",
        data={"token": local_server.token_for("web-user"), "next": "/?tag=x", "csrf": csrf},
        allow_redirects=False,
        timeout=30,
    )
    assert reply.headers["location"] == "/?tag=x"


def test_cross_site_and_forged_sign_in_forms_are_refused(local_server: LocalServer) -> None:
    token = local_server.token_for("web-user")
    session = requests.Session()
    csrf = _csrf(session, local_server)
    cross = session.post(
        f"{local_server.url}/login",
        data={"token": token, "next": "/", "csrf": csrf},
        headers={"Origin": "http://evil.example"},
        allow_redirects=False,
        timeout=30,
    )
    assert cross.status_code == 403
    assert "simvue_otel_session" not in cross.cookies
    for site in ("cross-site", "same-site"):  # same-site: another port of this host
        fetched = session.post(
            f"{local_server.url}/login",
            data={"token": token, "next": "/", "csrf": csrf},
            headers={"Sec-Fetch-Site": site},
            allow_redirects=False,
            timeout=30,
        )
        assert fetched.status_code == 403, site
    behind_proxy = session.post(  # a proxy rewrote Host; the browser vouches for the origin
        f"{local_server.url}/login",
        data={"token": token, "next": "/", "csrf": csrf},
        headers={"Sec-Fetch-Site": "same-origin", "Origin": "https://simvue.example"},
        allow_redirects=False,
        timeout=30,
    )
    assert behind_proxy.status_code == 303
    forged = requests.post(  # no form token, no cookie: what another site's form sends
        f"{local_server.url}/login",
        data={"token": token, "next": "/"},
        allow_redirects=False,
        timeout=30,
    )
    assert forged.status_code == 403
    assert "expired" in forged.text


def _sign_in_link(server: LocalServer) -> str:
    return next(
        line.split("Web view: ", 1)[1].split()[0]
        for line in server.log.read_text().splitlines()
        if line.startswith("Web view: ")
    )


def _form_fields(html_text: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html_text))


def _click_sign_in(
    browser: requests.Session, link: str, page: requests.Response | None = None
) -> requests.Response:
    """Open a sign-in link and press its button, as a person does (``page``: a confirmation
    page already shown, to press its button again)."""
    if page is None or page.status_code != 200:
        page = browser.get(link, allow_redirects=False, timeout=30)
        assert page.status_code == 200, (page.status_code, page.text[:300])
    return browser.post(
        link.split("?", 1)[0],
        data=_form_fields(page.text),
        headers={"Sec-Fetch-Site": "same-origin"},
        allow_redirects=False,
        timeout=30,
    )


def test_a_sign_in_link_signs_in_only_on_a_click(fresh_server: LocalServer) -> None:
    """Opening a sign-in link (which another site can make a browser do, with a link of its
    own user: login CSRF) shows whose it is and a button; only the button's POST, from this
    server's own page, signs in."""
    link = _sign_in_link(fresh_server)
    user = fresh_server.log.read_text().split("Created user '", 1)[1].split("'", 1)[0]
    browser = requests.Session()
    page = browser.get(link, allow_redirects=False, timeout=30)
    assert page.status_code == 200, (page.status_code, page.headers)
    assert "simvue_otel_session" not in browser.cookies
    assert f"<strong id=login-user>{user}</strong>" in page.text
    fields = _form_fields(page.text)
    assert set(fields) == {"code", "next", "csrf"} and fields["code"] == link.split("code=")[1]
    # Another site's form (no CSRF cookie), or this form posted from another site: refused.
    forged = requests.post(
        f"{fresh_server.url}/login", data=fields, allow_redirects=False, timeout=30
    )
    assert forged.status_code == 403 and "simvue_otel_session" not in forged.cookies
    cross = browser.post(
        f"{fresh_server.url}/login",
        data=fields,
        headers={"Sec-Fetch-Site": "cross-site"},
        allow_redirects=False,
        timeout=30,
    )
    assert cross.status_code == 403 and "simvue_otel_session" not in browser.cookies
    clicked = _click_sign_in(browser, link, page=page)
    assert clicked.status_code == 303 and clicked.headers["location"] == "/"
    assert browser.get(f"{fresh_server.url}/", allow_redirects=False, timeout=30).status_code == 200


def test_pages_may_not_be_framed(local_server: LocalServer, objects: dict[str, str]) -> None:
    """Every page of the web view forbids framing by other sites (a framed sign-in button
    could be clicked through a decoy) and keeps sign-in codes out of Referer headers."""
    browser = _web_session(local_server, objects["user"])
    pages = [
        requests.get(f"{local_server.url}/login", timeout=30),
        browser.get(f"{local_server.url}/", timeout=30),
        browser.get(f"{local_server.url}/runs/{objects['run']}", timeout=30),
        browser.get(f"{local_server.url}/runs/no-such-run", timeout=30),
    ]
    for page in pages:
        assert page.headers["content-type"].startswith("text/html"), page.url
        assert page.headers.get("x-frame-options") == "DENY", page.url
        assert "frame-ancestors 'none'" in page.headers.get("content-security-policy", "")
        assert page.headers.get("referrer-policy") == "no-referrer", page.url


def test_a_sign_in_link_works_once_and_the_cookie_is_no_api_token(
    fresh_server: LocalServer,
) -> None:
    link = _sign_in_link(fresh_server)
    first = requests.Session()
    shown = first.get(link, allow_redirects=False, timeout=30)
    reply = _click_sign_in(first, link, page=shown)
    assert reply.status_code == 303
    cookie = first.cookies.get("simvue_otel_session")
    assert cookie
    assert first.get(f"{fresh_server.url}/", timeout=30).status_code == 200

    again = requests.get(link + "&next=//evil.example/", allow_redirects=False, timeout=30)
    assert again.status_code == 401
    assert "already been used" in again.text
    twice = _click_sign_in(first, link, page=shown)  # the button pressed again
    assert twice.status_code == 401 and "already been used" in twice.text

    api = requests.get(
        f"{fresh_server.api}/runs", headers={"Authorization": f"Bearer {cookie}"}, timeout=30
    )
    assert api.status_code == 401

    first.get(f"{fresh_server.url}/logout", timeout=30)
    stale = requests.get(
        f"{fresh_server.url}/",
        cookies={"simvue_otel_session": cookie},
        allow_redirects=False,
        timeout=30,
    )
    assert stale.status_code == 303 and "/login" in stale.headers["location"]


def test_revoking_ends_tokens_and_sessions_and_new_tokens_work(fresh_server: LocalServer) -> None:
    user = "revoked-user"
    old = fresh_server.headers(user)
    web = _web_session(fresh_server, user)
    assert requests.get(f"{fresh_server.api}/whoami", headers=old, timeout=30).status_code == 200

    store = Store(fresh_server.db)
    try:
        assert store.revoke_tokens(user)
        assert not store.revoke_tokens("nobody-of-that-name")
    finally:
        store.close()

    refused = requests.get(f"{fresh_server.api}/whoami", headers=old, timeout=30)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    page = web.get(f"{fresh_server.url}/", allow_redirects=False, timeout=30)
    assert page.status_code == 303 and "/login" in page.headers["location"]

    new = _mint(fresh_server, user)
    reply = requests.get(
        f"{fresh_server.api}/whoami", headers={"Authorization": f"Bearer {new}"}, timeout=30
    )
    assert reply.status_code == 200, reply.text


def _mint(server: LocalServer, user: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "simvue_otel", "server", "token", "--db", str(server.db),
         "--user", user],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def test_a_recreated_user_does_not_revive_old_tokens(fresh_server: LocalServer) -> None:
    user = "phoenix"
    old = fresh_server.headers(user)
    assert requests.get(f"{fresh_server.api}/whoami", headers=old, timeout=30).status_code == 200
    with sqlite3.connect(fresh_server.db) as db:
        db.execute("DELETE FROM users WHERE name = ?", (user,))
    gone = requests.get(f"{fresh_server.api}/whoami", headers=old, timeout=30)
    assert gone.status_code == 401
    new = _mint(fresh_server, user)  # the name exists again
    still = requests.get(f"{fresh_server.api}/whoami", headers=old, timeout=30)
    assert still.status_code == 401, still.text
    reply = requests.get(
        f"{fresh_server.api}/whoami", headers={"Authorization": f"Bearer {new}"}, timeout=30
    )
    assert reply.status_code == 200


# -- values that answered 500 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def objects(local_server: LocalServer) -> dict[str, str]:
    """A run (with a metric logged without a time), a folder and two tags of one user."""
    user = "malformed"
    headers = local_server.headers(user)
    run_id = _new_run(local_server, user)
    requests.post(
        f"{local_server.api}/metrics",
        json={"run": run_id, "metrics": [{"values": {"x": 1.0}, "step": 0}]},
        headers=headers,
        timeout=30,
    ).raise_for_status()
    folder = requests.post(
        f"{local_server.api}/folders", json={"path": f"/{_unique('f')}"}, headers=headers,
        timeout=30,
    ).json()["id"]  # fmt: skip
    tags = [
        requests.post(
            f"{local_server.api}/tags", json={"name": _unique("tag")}, headers=headers, timeout=30
        ).json()["id"]
        for _ in range(2)
    ]
    return {"user": user, "run": run_id, "folder": folder, "tag": tags[0], "tag2": tags[1]}


BIG = str(2**63)
_DEEP = "[" * 990 + "]" * 990
_DEEP_META = '{"a":' * 100 + "1" + "}" * 100


@pytest.mark.parametrize(
    ("method", "path", "body", "field_name"),
    [
        (
            "POST",
            "/metrics",
            '{"run": "{run}", "metrics": [{"values": {"x": 1}, "step": ' + BIG + "}]}",
            "metrics.0.step",
        ),
        (
            "POST",
            "/metrics",
            '{"run": "{run}", "metrics": [{"values": {"x": 1}, "time": ' + BIG + "}]}",
            "metrics.0.time",
        ),
        (
            "POST",
            "/metrics",
            '{"run": "{run}", "metrics": [{"values": {"x": 1' + "0" * 400 + "}}]}",
            "metrics.0.values.x",
        ),
        (
            "POST",
            "/metrics",
            '{"run": "{run}", "metrics": [{"values": {"x": 1}, "time": NaN}]}',
            "metrics.0.time",
        ),
        ("POST", "/runs", '{"ttl": 1e400}', "ttl"),
        ("POST", "/runs", '{"heartbeat_timeout": NaN}', "heartbeat_timeout"),
        ("PUT", "/runs/{run}", '{"ttl": Infinity}', "ttl"),
        ("PUT", "/runs/{run}", '{"heartbeat_timeout": 1e400}', "heartbeat_timeout"),
        ("POST", "/runs", '{"metadata": ' + _DEEP + "}", "body"),
        ("POST", "/runs", '{"metadata": ' + _DEEP_META + "}", "metadata"),
        ("POST", "/runs", '{"folder": "' + "/a" * 1000 + '"}', "folder"),
        ("POST", "/folders", '{"path": "' + "/a" * 1000 + '"}', "path"),
        ("POST", "/runs", '{"name": "ok", "description": "\\ud800"}', "description"),
        ("POST", "/folders", '{"path": "/\\udfff"}', "path"),
        ("POST", "/tags", '{"name": "x\\ud800y"}', "name"),
        ("POST", "/runs", '{"metadata": {"\\ud800": 1}}', "metadata"),
        ("PUT", "/folders/{folder}", "[1, 2]", "body"),
        ("PUT", "/folders/{folder}/starred", "[true]", "body"),
        ("PUT", "/runs/{run}/starred", '"yes"', "body"),
        ("POST", "/tags", '["a"]', "body"),
        ("PUT", "/tags/{tag}", '["a"]', "body"),
        ("POST", "/tags", '{"name": "colour-object", "colour": {"r": 1}}', "colour"),
        ("PUT", "/tags/{tag}", '{"colour": [1]}', "colour"),
        ("PUT", "/tags/{tag}", '{"description": {"a": 1}}', "description"),
        ("PUT", "/tags/{tag}", '{"name": 5}', "name"),
        ("POST", "/metrics", "[1]", "body"),
        ("POST", "/events", '{"run": "{run}", "events": [{"message": "\\udc00"}]}', "events"),
    ],
)
def test_malformed_values_are_422_naming_the_field(
    local_server: LocalServer,
    objects: dict[str, str],
    method: str,
    path: str,
    body: str,
    field_name: str,
) -> None:
    def fill(text: str) -> str:
        for key in ("run", "folder", "tag"):
            text = text.replace("{" + key + "}", objects[key])
        return text

    used = cpu_seconds(local_server.process)
    reply = _raw(local_server, method, fill(path), fill(body), objects["user"])
    assert cpu_seconds(local_server.process) - used < QUICK
    _assert_422_naming(reply, field_name)
    _still_healthy(local_server, objects["user"])


@pytest.mark.parametrize(
    ("path", "body", "field_name"),
    [
        ("/runs", {"name": "packed", "metadata": {"a": b"bytes"}}, "metadata.a"),
        ("/runs", {"name": "packed", "metadata": {"a": msgpack.ExtType(5, b"")}}, "metadata.a"),
        ("/metrics", {"run": "x", "metrics": [{"values": {"x": b"1"}}]}, "metrics"),
    ],
)
def test_msgpack_values_json_cannot_hold_are_422(
    local_server: LocalServer, path: str, body: dict[str, Any], field_name: str
) -> None:
    reply = requests.post(
        f"{local_server.api}{path}",
        data=msgpack.packb(body, use_bin_type=True),
        headers={**local_server.headers("packer"), "Content-Type": "application/msgpack"},
        timeout=30,
    )
    _assert_422_naming(reply, field_name)
    _still_healthy(local_server, "packer")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/metrics", {"runs": "5", "metrics": '["x"]'}),
        ("/metrics", {"runs": '["{run}"]', "metrics": "5"}),
        ("/metrics", {"runs": "true", "metrics": '["x"]'}),
        ("/metrics", {"runs": '{"a": 1}'}),
        ("/metrics", {"runs": '["{run}"]', "metrics": '["x"]', "xaxis": "nope"}),
        ("/metrics/names", {"runs": "5"}),
        ("/metrics/names", {"runs": "[" * 5000 + "]" * 5000}),
        ("/metrics/names", {"runs": "1" * 5000}),
        ("/runs", {"sorting": "5"}),
        ("/runs", {"sorting": "[" * 3000 + "]" * 3000}),
        ("/runs", {"start": "x"}),
        ("/runs", {"count": "1e3"}),
        ("/events", {}),
    ],
)
def test_bad_query_values_are_400(
    local_server: LocalServer, objects: dict[str, str], path: str, params: dict[str, str]
) -> None:
    filled = {k: v.replace("{run}", objects["run"]) for k, v in params.items()}
    reply = requests.get(
        f"{local_server.api}{path}",
        params=filled,
        headers=local_server.headers(objects["user"]),
        timeout=30,
    )
    assert reply.status_code == 400, reply.text[:300]
    assert isinstance(reply.json()["detail"], str)


def test_aggregating_points_without_a_time_is_not_a_500(
    local_server: LocalServer, objects: dict[str, str]
) -> None:
    reply = requests.get(
        f"{local_server.api}/metrics",
        params={"runs": f'["{objects["run"]}"]', "metrics": '["x"]', "xaxis": "time",
                "aggregate": "true"},
        headers=local_server.headers(objects["user"]),
        timeout=30,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text


def test_renaming_a_tag_onto_an_existing_name_is_409(
    local_server: LocalServer, objects: dict[str, str]
) -> None:
    headers = local_server.headers(objects["user"])
    other = requests.get(f"{local_server.api}/tags/{objects['tag2']}", headers=headers, timeout=30)
    reply = requests.put(
        f"{local_server.api}/tags/{objects['tag']}",
        json={"name": other.json()["name"]},
        headers=headers,
        timeout=30,
    )
    assert reply.status_code == 409, reply.text
    assert "already exists" in reply.json()["detail"]
    assert reply.json()["id"] == objects["tag2"]


def test_run_page_plotted_against_time_when_a_metric_has_none(
    local_server: LocalServer, objects: dict[str, str]
) -> None:
    session = _web_session(local_server, objects["user"])
    page = session.get(f"{local_server.url}/runs/{objects['run']}", params={"x": "time"})
    assert page.status_code == 200, page.text[:500]
    assert 'data-metric="x"' in page.text


# -- work off the event loop ----------------------------------------------------------------------


def test_a_run_with_100k_tags_stalls_no_one(local_server: LocalServer) -> None:
    user = _unique("many-tags")
    tags = [f"t{i}" for i in range(100_000)]
    with watching(local_server, "bystander") as watch:
        reply = requests.post(
            f"{local_server.api}/runs",
            json={"name": _unique("tags"), "folder": "/hardening", "tags": tags},
            headers=local_server.headers(user),
            timeout=300,
        )
        assert reply.status_code == 200, reply.text[:300]
        listing = requests.get(
            f"{local_server.api}/runs", headers=local_server.headers(user), timeout=300
        )
        assert listing.status_code == 200
    assert watch.worst < RESPONSIVE, sorted(watch.latencies)[-5:]
    _still_healthy(local_server)


# -- the bridge -----------------------------------------------------------------------------------


def test_bridge_refuses_deeply_nested_otlp_json_with_400(bridge: Bridge) -> None:
    for depth in (1_000, 100_000):
        body = '{"resourceSpans": ' + "[" * depth + "]" * depth + "}"
        reply = requests.post(
            f"{bridge.url}/v1/traces",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        assert reply.status_code == 400, reply.text[:300]
    assert requests.get(f"{bridge.url}/health", timeout=10).status_code == 200


def test_the_token_cli_revokes_every_token_of_a_user(local_server: LocalServer) -> None:
    """`simvue-otel server token --revoke`: the user's tokens stop working at once; a token
    minted afterwards works; an unknown user is an error."""
    user = f"leaky-{uuid.uuid4().hex[:6]}"
    old = local_server.token_for(user)
    base = [sys.executable, "-m", "simvue_otel", "server", "token", "--db", str(local_server.db)]
    assert (
        requests.get(
            f"{local_server.api}/whoami", headers={"Authorization": f"Bearer {old}"}, timeout=10
        ).status_code
        == 200
    )
    done = subprocess.run(
        [*base, "--user", user, "--revoke"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    refused = requests.get(
        f"{local_server.api}/whoami", headers={"Authorization": f"Bearer {old}"}, timeout=10
    )
    assert refused.status_code == 401 and "revoked" in refused.text
    fresh = subprocess.run(
        [*base, "--user", user], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert (
        requests.get(
            f"{local_server.api}/whoami", headers={"Authorization": f"Bearer {fresh}"}, timeout=10
        ).status_code
        == 200
    )
    nobody = subprocess.run(
        [*base, "--user", "no-such-user-here", "--revoke"], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert nobody.returncode == 1 and "no user 'no-such-user-here'" in nobody.stderr


# -- metric names: bounded in length and in number per run ---------------------------------------


def _post_metrics_entries(
    server: LocalServer, user: str, run_id: str, entries: list[dict[str, Any]]
) -> requests.Response:
    return requests.post(
        f"{server.api}/metrics",
        data=msgpack.packb({"run": run_id, "metrics": entries}, use_bin_type=True),
        headers={**server.headers(user), "Content-Type": "application/msgpack"},
        timeout=60,
    )


def _post_metrics(
    server: LocalServer, user: str, run_id: str, values: dict[str, float]
) -> requests.Response:
    return _post_metrics_entries(server, user, run_id, [{"values": values, "step": 0, "time": 0.0}])


def test_a_metric_name_longer_than_the_bound_is_422_and_not_stored(
    local_server: LocalServer,
) -> None:
    """A 1 MB metric name is refused, naming the field, the bound and the length given (the
    reply quotes only its start); a name of exactly the bound is stored."""
    user = "long-names"
    run_id = _new_run(local_server, user)
    bound = cv.MAX_METRIC_NAME_LENGTH
    for name in ("m" * (bound + 1), "m" * 2**20):
        reply = _post_metrics(local_server, user, run_id, {name: 1.0})
        _assert_422_naming(reply, "metrics.0.values")
        assert f"at most {bound} characters" in reply.text and str(len(name)) in reply.text
        assert len(reply.content) < 2000, "the reply echoes the whole name"
    ok = _post_metrics(local_server, user, run_id, {"m" * bound: 1.0})
    assert ok.status_code == 200, ok.text[:300]
    names = requests.get(
        f"{local_server.api}/metrics/names",
        params={"runs": f'["{run_id}"]'},
        headers=local_server.headers(user),
        timeout=30,
    ).json()
    assert names == ["m" * bound]
    _still_healthy(local_server, user)


def test_a_run_holds_a_bounded_number_of_metric_names(local_server: LocalServer) -> None:
    """Up to MAX_METRICS_PER_RUN distinct names a run takes; a batch bringing one more new
    name is refused whole (422 naming `metrics`, the bound and the counts), while more points
    of names the run already holds are stored."""
    user = "many-names"
    bound = cv.MAX_METRICS_PER_RUN
    run_id = _new_run(local_server, user)
    first = {f"n{i}": float(i) for i in range(bound)}
    assert _post_metrics(local_server, user, run_id, first).status_code == 200
    over = _post_metrics(local_server, user, run_id, {"n0": 1.0, "one-too-many": 2.0})
    _assert_422_naming(over, "metrics")
    assert f"at most {bound} distinct metric names" in over.text, over.text
    assert f"holds {bound}" in over.text and "one-too-many" in over.text
    again = _post_metrics(local_server, user, run_id, {"n0": 1.0, f"n{bound - 1}": 2.0})
    assert again.status_code == 200, again.text[:300]
    run = requests.get(
        f"{local_server.api}/runs/{run_id}", headers=local_server.headers(user), timeout=30
    ).json()
    assert len(run["metrics"]) == bound and "one-too-many" not in run["metrics"]
    assert run["metrics"]["n0"]["count"] == 2

    fresh = _new_run(local_server, user)  # one batch over the bound by itself
    too_many = {f"k{i}": 0.0 for i in range(bound + 1)}
    _assert_422_naming(_post_metrics(local_server, user, fresh, too_many), "metrics")
    _still_healthy(local_server, user)


# -- the database file holds the token-signing secret: private to its owner ------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_database_and_its_side_files_are_private(tmp_path: Path) -> None:
    """A new database (made by the server, or by `server token --create`) and the -wal and
    -shm files SQLite keeps beside it are 0600 whatever the umask lets through: they hold the
    secret that signs every token. One made earlier, readable by all, is made private at
    start, with a warning."""
    server = start_server(tmp_path / "new")
    try:
        assert requests.get(f"{server.api}/runs", headers=server.headers(), timeout=30).ok
        files = [server.db, Path(f"{server.db}-wal"), Path(f"{server.db}-shm")]
        assert all(f.exists() for f in files), list(server.db.parent.iterdir())
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        stop_server(server)

    minted = tmp_path / "minted.db"
    subprocess.run(
        [sys.executable, "-m", "simvue_otel", "server", "token", "--db", str(minted),
         "--user", "someone", "--create"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert _mode(minted) == 0o600

    for f in files:  # as an older version left them
        if f.exists():
            f.chmod(0o644)
    again = start_server(tmp_path / "new", db=server.db, first_token=server.token)
    try:
        assert {f.name: _mode(f) for f in files if f.exists()} == {
            f.name: 0o600 for f in files if f.exists()
        }
        log = again.log.read_text()
        assert f"{server.db} could be read by other users (mode 644)" in log, log
        assert requests.get(f"{again.api}/runs", headers=again.headers(), timeout=30).ok
    finally:
        stop_server(again)


# -- a full disk: 503 with Retry-After, said by /health, and over once there is room -------------


def test_a_full_disk_is_503_with_retry_after_and_health_says_so(
    small_disk: Path, tmp_path: Path
) -> None:
    """Metrics written until the database's disk is full: the write that finds no room is
    answered 503 with Retry-After (clients retry it), nothing of it is stored, reads go on,
    and /health says the disk is full until room is made; then writes work again."""
    server = start_server(tmp_path / "server", db=small_disk / "simvue.db")
    try:
        user = "filler"
        run_id = _new_run(server, user)
        entries = [
            {"values": {f"m{j}": float(i * j) for j in range(10)}, "step": i, "time": float(i)}
            for i in range(5000)
        ]
        stored = 0
        for _ in range(100):
            reply = _post_metrics_entries(server, user, run_id, entries)
            if reply.status_code != 200:
                break
            stored += 1
        else:
            pytest.fail("a 2 MiB disk took 100 batches of 50,000 values")
        assert reply.status_code == 503, (reply.status_code, reply.text[:500])
        assert int(reply.headers["Retry-After"]) > 0
        assert "is full" in reply.json()["detail"] and "nothing of this request" in reply.text
        assert stored >= 1

        health = requests.get(f"{server.url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "disk full", health.text
        assert "Retry-After" in health.headers
        listed = requests.get(f"{server.api}/runs", headers=server.headers(user), timeout=30)
        assert listed.status_code == 200, listed.text[:300]
        run = requests.get(
            f"{server.api}/runs/{run_id}", headers=server.headers(user), timeout=30
        ).json()
        assert run["metrics"]["m1"]["count"] == 5000 * stored  # the refused batch left nothing

        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        health = requests.get(f"{server.url}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
        again = _post_metrics_entries(server, user, run_id, entries)
        assert again.status_code == 200, again.text[:300]
    finally:
        stop_server(server)
