"""The local server's web view: a runs list and a page per run, rendered on the server.

Pages are plain HTML with inline CSS and server-drawn SVG plots, so they work with no
network and no scripts fetched from anywhere. A browser signs in once (a single-use login link
the server prints, or by pasting an API token into the form) and then holds a session cookie;
every page is read as that user, with the same visibility rules as the API.

The cookie names a server-side session, not an API token: signing out ends it, as does
revoking the user's tokens. The sign-in form is protected against cross-site use (an Origin
check and a double-submit token in a SameSite cookie), and redirects after sign-in go only to
paths on this server.
"""

from __future__ import annotations

import hmac
import html
import json
import math
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .. import conventions as cv
from ..flatten import flatten
from .auth import Identity, TokenError, issue_login_code, read_login_code, verify_token
from .bodies import LOGIN_MAX_BODY, read_body
from .filters import FilterError, parse_filters
from .store import NotFound, Store, StoreError

__all__ = ["issue_login_code", "web_routes"]

COOKIE = "simvue_otel_session"
CSRF_COOKIE = "simvue_otel_csrf"
SESSION_SECONDS = 7 * 86400
"""How long a web session lasts (signing out, or revoking the user's tokens, ends it sooner)."""
_STATUSES = cv.RUN_STATUSES

_CSS = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d3557;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1rem;align-items:center}
header a{color:#fff;text-decoration:none}main{padding:1rem 1.2rem;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:.35rem .6rem;
border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}th{background:#eef1f4}
.status{padding:.1rem .45rem;border-radius:.6rem;font-size:.85em;color:#fff;background:#6c757d}
.status-running{background:#1f77b4}.status-completed{background:#2a9d48}
.status-failed{background:#c0392b}.status-terminated{background:#e67e22}
.status-lost{background:#7f8c8d}.status-created{background:#8e44ad}
.tag{background:#e8eef7;border-radius:.3rem;padding:.05rem .35rem;margin-right:.25rem}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:1rem}
.plot{background:#fff;border:1px solid #e3e6ea;padding:.5rem}.plot h4{margin:.2rem 0}
form.filters{display:flex;gap:.6rem;margin-bottom:1rem;flex-wrap:wrap}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem;background:#fff;padding:.8rem}
dt{font-weight:600}dd{margin:0}.muted{color:#6c757d}
"""


def local_path(target: str) -> str:
    """``target`` when it is a path on this server, else ``/``: never a redirect elsewhere
    (``//host``, ``/\\host``, a scheme, control characters)."""
    if (
        not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or len(target) > 2000
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)
        or urlsplit(target).netloc
    ):
        return "/"
    return target


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


PAGE_HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
"""Sent with every page: no other site may frame one (a framed sign-in button could be
clicked through a decoy), and a sign-in link's code never leaves in a Referer."""


def _page(title: str, body: str, who: Identity | None = None, status: int = 200) -> HTMLResponse:
    user = (
        f'<span class="muted">{_e(who.user)} ({_e(who.tenant)})</span> '
        '<a href="/logout">sign out</a>'
        if who
        else ""
    )
    return HTMLResponse(
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)} · simvue-otel</title><style>{_CSS}</style></head><body>"
        f'<header><a href="/"><strong>simvue-otel</strong></a><a href="/">Runs</a>'
        f'<span style="flex:1"></span>{user}</header><main>{body}</main></body></html>',
        status_code=status,
        headers=PAGE_HEADERS,
    )


def _tags(tags: Any) -> str:
    return "".join(f"<span class=tag>{_e(t)}</span>" for t in tags or [])


def _status(status: str) -> str:
    return f'<span class="status status-{_e(status)}">{_e(status)}</span>'


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.6g}"


def svg_plot(points: Sequence[tuple[float, float]], *, x_label: str, width: int = 360) -> str:
    """A line plot of (x, y) points as inline SVG; each point is also a circle (up to 2000),
    and ``data-points`` holds the count, so what is drawn can be checked."""
    height, pad = 200, 40
    finite = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    if not finite:
        return (
            f'<svg class="metric-plot" data-points="{len(points)}" width="{width}" height="40">'
            '<text x="4" y="20">no finite values</text></svg>'
        )
    xs = [p[0] for p in finite]
    ys = [p[1] for p in finite]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def sx(x: float) -> float:
        return pad + _position(x, x0, x1) * (width - pad - 10)

    def sy(y: float) -> float:
        return height - 25 - _position(y, y0, y1) * (height - 35)

    drawn = _envelope(finite, 2000) if len(finite) > 4000 else finite
    coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in drawn)
    circles = ""
    if len(finite) <= 2000:
        circles = "".join(
            f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="1.6"/>' for x, y in finite
        )
    return (
        f'<svg class="metric-plot" data-points="{len(points)}" data-drawn="{len(drawn)}" '
        f'width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f'<line x1="{pad}" y1="{height - 25}" x2="{width - 10}" y2="{height - 25}" stroke="#999"/>'
        f'<line x1="{pad}" y1="10" x2="{pad}" y2="{height - 25}" stroke="#999"/>'
        f'<text x="{pad}" y="{height - 8}" font-size="10">{_e(_fmt(x0))}</text>'
        f'<text x="{width - 10}" y="{height - 8}" font-size="10" text-anchor="end">'
        f"{_e(_fmt(x1))} ({_e(x_label)})</text>"
        f'<text x="2" y="14" font-size="10">{_e(_fmt(y1))}</text>'
        f'<text x="2" y="{height - 28}" font-size="10">{_e(_fmt(y0))}</text>'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.2" points="{coords}"/>'
        f'<g fill="#1f77b4">{circles}</g></svg>'
    )


def _position(value: float, low: float, high: float) -> float:
    """Where ``value`` lies from ``low`` (0) to ``high`` (1); 0.5 when they coincide (as +1
    does not separate them for values near 1e16 and beyond). Halved first, so that values
    near the largest double do not overflow to infinity."""
    span = high / 2 - low / 2
    if span <= 0:
        return 0.5
    return (value / 2 - low / 2) / span


def _envelope(points: Sequence[tuple[float, float]], buckets: int) -> list[tuple[float, float]]:
    """Long series drawn as their envelope: per bucket of consecutive points, the lowest and
    the highest (in x order), so spikes stay visible and the page stays small."""
    size = math.ceil(len(points) / buckets)
    out: list[tuple[float, float]] = []
    for start in range(0, len(points), size):
        chunk = points[start : start + size]
        low = min(chunk, key=lambda p: p[1])
        high = max(chunk, key=lambda p: p[1])
        out.extend(sorted({low, high}, key=lambda p: p[0]))
    return out


class _Web:
    """The handlers of the web view, each reading through ``store`` as the signed-in user (with
    the same visibility rules as the API); :meth:`routes` lists them."""

    USED_CODE = (
        "this sign-in link has already been used (each works once): paste a token, "
        "or restart the server for a new link"
    )

    def __init__(self, store: Store) -> None:
        self.store = store
        self.secret = store.secret()

    def routes(self) -> list[Route]:
        """The routes of the web view."""
        return [
            Route("/", self.runs, methods=["GET"]),
            Route("/runs/{run_id}", self.run_page, methods=["GET"]),
            Route("/dashboard/runs/run/{run_id}", self.dashboard_run, methods=["GET"]),
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["GET"]),
        ]

    def identity(self, request: Request) -> Identity | None:
        session_id = request.cookies.get(COOKIE)
        return self.store.session_identity(session_id) if session_id else None

    @staticmethod
    def to_login(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    def session(self, who: Identity, target: str) -> Response:
        response = RedirectResponse(local_path(target), status_code=303)
        response.set_cookie(
            COOKIE,
            self.store.create_session(who, SESSION_SECONDS),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
        )
        return response

    def with_token(self, token: str, target: str) -> Response | str:
        """Sign in with a pasted API token: a session, or the reason it is refused."""
        try:
            who = verify_token(self.secret, f"Bearer {token}")
        except TokenError as exc:
            return str(exc)
        problem = self.store.token_problem(who)
        return problem if problem else self.session(who, target)

    def read_code(self, code: str) -> tuple[Identity, dict[str, Any]] | str:
        """Whose a sign-in link's code is, and its claims; or why it is refused. Nothing is
        redeemed: the link is only shown, to be confirmed with a click."""
        try:
            who, claims = read_login_code(self.secret, code)
        except TokenError as exc:
            return str(exc)
        problem = self.store.token_problem(who)
        if problem:
            return problem.replace("the token", "the sign-in link")
        if self.store.code_used(claims["jti"]):
            return self.USED_CODE
        return who, claims

    def with_code(self, code: str, target: str) -> Response | str:
        """Sign in with a link's code, which works once: a session, or why it is refused."""
        found = self.read_code(code)
        if isinstance(found, str):
            return found
        who, claims = found
        if not self.store.redeem_code(claims["jti"], float(claims["exp"])):
            return self.USED_CODE
        return self.session(who, target)

    @staticmethod
    def cross_site(request: Request) -> bool:
        """Whether a form POST comes from another origin. Browsers say so in Sec-Fetch-Site
        (which a reverse proxy leaves alone; another port of this host is "same-site", and
        refused too); without it, the Origin must name this server's Host."""
        fetch_site = request.headers.get("sec-fetch-site")
        if fetch_site is not None:
            return fetch_site not in ("same-origin", "none")
        origin = request.headers.get("origin")
        if origin is None:
            return False
        hosts = {request.headers.get("host", ""), request.headers.get("x-forwarded-host", "")}
        return urlsplit(origin).netloc not in hosts

    @staticmethod
    def form_csrf(request: Request) -> str:
        csrf = request.cookies.get(CSRF_COOKIE) or ""
        if not (20 <= len(csrf) <= 100 and csrf.isascii()):
            csrf = secrets.token_urlsafe(24)
        return csrf

    @staticmethod
    def with_csrf(response: Response, csrf: str) -> Response:
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/login")
        return response

    def form_page(self, request: Request, target: str, error: str, status: int) -> Response:
        csrf = self.form_csrf(request)
        body = (
            "<h2>Sign in</h2>"
            + (f'<p style="color:#c0392b">{_e(error)}</p>' if error else "")
            + '<form method="post" action="/login"><p>Paste a token (the SIMVUE_TOKEN the '
            "server printed, or one from <code>simvue-otel server token</code>):</p>"
            '<textarea name="token" rows="4" cols="80"></textarea>'
            f'<input type="hidden" name="next" value="{_e(local_path(target))}">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}"><p>'
            '<button type="submit">Sign in</button></p></form>'
        )
        return self.with_csrf(_page("Sign in", body, status=status), csrf)

    def confirm_page(self, request: Request, code: str, who: Identity, target: str) -> Response:
        """A sign-in link asks for a click before it signs in: opened from another site, it
        would otherwise sign the browser in as whoever made the link (login CSRF)."""
        csrf = self.form_csrf(request)
        body = (
            "<h2>Sign in</h2>"
            f"<p>This link signs this browser in to the simvue-otel server as "
            f"<strong id=login-user>{_e(who.user)}</strong> (tenant {_e(who.tenant)}).</p>"
            "<p class=muted>Continue only if you opened the link the server printed for you.</p>"
            '<form method="post" action="/login">'
            f'<input type="hidden" name="code" value="{_e(code)}">'
            f'<input type="hidden" name="next" value="{_e(local_path(target))}">'
            f'<input type="hidden" name="csrf" value="{_e(csrf)}"><p>'
            f'<button type="submit">Sign in as {_e(who.user)}</button></p></form>'
        )
        return self.with_csrf(_page("Sign in", body), csrf)

    async def login(self, request: Request) -> Response:
        target = request.query_params.get("next", "/")
        code = request.query_params.get("code")
        error, status = "", 200
        if request.method == "POST":
            try:
                raw = await read_body(request, LOGIN_MAX_BODY)
            except StoreError as exc:
                return _page("Sign in", f"<p>{_e(exc.detail)}</p>", status=exc.status)
            # An urlencoded form, read without a multipart parser (a dependency we can skip).
            form = parse_qs(raw.decode("utf-8", "replace"))
            token = (form.get("token") or [""])[0].strip()
            posted_code = (form.get("code") or [""])[0].strip()
            target = (form.get("next") or ["/"])[0]
            sent = (form.get("csrf") or [""])[0]
            expected = request.cookies.get(CSRF_COOKIE) or ""
            if self.cross_site(request):
                error, status = "sign-in from another site is refused", 403
            elif not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
                error = "the sign-in form has expired: paste the token again"
                status = 403
            else:
                if posted_code:
                    outcome = await run_in_threadpool(self.with_code, posted_code, target)
                else:
                    outcome = await run_in_threadpool(self.with_token, token, target)
                if isinstance(outcome, Response):
                    return outcome
                error, status = outcome, 401
        elif code:
            # A link signs in only once its page's button is clicked (a POST of the form).
            found = await run_in_threadpool(self.read_code, code)
            if not isinstance(found, str):
                return self.confirm_page(request, code, found[0], target)
            error, status = found, 401
        return self.form_page(request, target, error, status)

    def logout(self, request: Request) -> Response:
        session_id = request.cookies.get(COOKIE)
        if session_id:
            self.store.end_session(session_id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    def runs(self, request: Request) -> Response:
        who = self.identity(request)
        if who is None:
            return self.to_login(request)
        folder = request.query_params.get("folder", "").strip()
        tag = request.query_params.get("tag", "").strip()
        status = request.query_params.get("status", "").strip()
        filters = []
        if folder:
            filters.append(f"folder.path == {folder}")
        if tag:
            filters.append(f"has tag.{tag}")
        if status:
            filters.append(f"status == {status}")
        try:
            predicate = parse_filters(json.dumps(filters), None, {"folder.path": "folder"})
        except FilterError as exc:
            return _page("Runs", f"<p>{_e(exc)}</p>", who, status=400)
        found, total = self.store.list_runs(
            who, predicate, sorting=[{"id": "started", "desc": True}], metrics=True
        )
        options = "".join(
            f'<option value="{s}"{" selected" if s == status else ""}>{s}</option>'
            for s in ("", *_STATUSES)
        )
        rows = "".join(
            "<tr class=run-row>"
            f'<td><a href="/runs/{_e(r["id"])}">{_e(r["name"])}</a></td>'
            f"<td>{_e(r.get('folder', '/'))}</td><td>{_status(r['status'])}</td>"
            f"<td>{_tags(r.get('tags'))}</td>"
            f"<td>{_e(r.get('started') or '')}</td>"
            f"<td>{sum(int(m.get('count', 0)) for m in (r.get('metrics') or {}).values())}</td>"
            "</tr>"
            for r in found
        )
        body = (
            f"<h2>Runs <span class=muted>({total})</span></h2>"
            '<form class="filters" method="get" action="/">'
            f'<label>Folder <input name="folder" value="{_e(folder)}" placeholder="/path"></label>'
            f'<label>Tag <input name="tag" value="{_e(tag)}"></label>'
            f'<label>Status <select name="status">{options}</select></label>'
            '<button type="submit">Filter</button> <a href="/">clear</a></form>'
            "<table id=runs><thead><tr><th>Name</th><th>Folder</th><th>Status</th><th>Tags</th>"
            f"<th>Started</th><th>Metric points</th></tr></thead><tbody>{rows}</tbody></table>"
        )
        return _page("Runs", body, who)

    def run_page(self, request: Request) -> Response:
        who = self.identity(request)
        if who is None:
            return self.to_login(request)
        run_id = request.path_params["run_id"]
        try:
            run = self.store.get_run(who, run_id)
        except NotFound:
            message = "<h2>No such run</h2><p>It does not exist, or it is not visible to you.</p>"
            return _page("Not found", message, who, status=404)
        x_axis = request.query_params.get("x", "step")
        if x_axis not in ("step", "time"):
            x_axis = "step"
        names = self.store.metric_names(who, [run_id])
        series = self.store.plot_points(who, run_id, names, x_axis)
        events, _ = self.store.get_events(who, run_id, lambda *_: True, 0, None)
        vis = run.get("visibility") or {}
        shared = (
            "public" if vis.get("public") else "tenant" if vis.get("tenant") else "private"
        ) + (f"; users: {', '.join(vis.get('users') or [])}" if vis.get("users") else "")
        metadata = "".join(
            f"<tr><td>{_e(k)}</td><td>{_e(json.dumps(v))}</td></tr>"
            for k, v in sorted(
                flatten(user_metadata(run.get("metadata")), empty_is_leaf=True).items()
            )
        )

        def plots(group: list[str]) -> str:
            return "".join(
                f'<div class="plot" data-metric="{_e(name)}"><h4>{_e(name)}</h4>'
                + svg_plot(series.get(name, []), x_label=x_axis)
                + "</div>"
                for name in group
            )

        own = [n for n in names if not n.startswith("resources/")]
        resources = [n for n in names if n.startswith("resources/")]
        other_axis = "time" if x_axis == "step" else "step"
        event_rows = "".join(
            f"<tr class=event-row><td>{_e(e['timestamp'])}</td><td>{_e(e['log_level'])}</td>"
            f"<td><pre style='margin:0;white-space:pre-wrap'>{_e(e['message'])}</pre></td></tr>"
            for e in events
        )
        body = (
            f"<h2>{_e(run['name'])} {_status(run['status'])}</h2><dl>"
            f"<dt>Folder</dt><dd>{_e(run.get('folder', '/'))}</dd>"
            f"<dt>Description</dt><dd>{_e(run.get('description') or '')}</dd>"
            f"<dt>Tags</dt><dd>{_tags(run.get('tags'))}</dd>"
            f"<dt>Visibility</dt><dd>{_e(shared)}</dd>"
            f"<dt>Owner</dt><dd>{_e(run.get('user', ''))}</dd>"
            f"<dt>Started</dt><dd>{_e(run.get('started') or '')}</dd>"
            f"<dt>Ended</dt><dd>{_e(run.get('endtime') or '')}</dd></dl>"
            f"<h3>Metadata</h3><table id=metadata><tbody>{metadata}</tbody></table>"
            f'<h3>Metrics <small><a href="?{urlencode({"x": other_axis})}">plot against '
            f"{other_axis}</a></small></h3><div class=plots id=metrics>{plots(own)}</div>"
            + (
                f"<h3>Resources</h3><div class=plots id=resources>{plots(resources)}</div>"
                if resources
                else ""
            )
            + f"<h3>Events ({len(events)})</h3><table id=events><tbody>{event_rows}</tbody></table>"
        )
        return _page(str(run["name"]), body, who)

    def dashboard_run(self, request: Request) -> Response:
        """The address the official client prints for a run (``Monitor in the UI at
        <server>/dashboard/runs/run/<id>``), sent on to the run's page here."""
        return RedirectResponse(f"/runs/{quote(request.path_params['run_id'], safe='')}", 303)


def web_routes(store: Store) -> list[Route]:
    """The routes of the web view, reading through ``store`` with each user's visibility."""
    return _Web(store).routes()


BOOKKEEPING_PREFIX = cv.BOOKKEEPING_PREFIX


def user_metadata(metadata: Any) -> dict[str, Any]:
    """A run's metadata as its user gave it: without simvue-otel's bookkeeping keys."""
    if not isinstance(metadata, dict):
        return {}
    return {k: v for k, v in metadata.items() if not str(k).startswith(BOOKKEEPING_PREFIX)}
