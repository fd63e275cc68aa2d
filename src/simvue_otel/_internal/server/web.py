"""The local server's web view: a runs list and a page per run, rendered on the server.

Pages are plain HTML with inline CSS and server-drawn SVG plots, so they work with no
network and no scripts fetched from anywhere. A browser signs in once (a login link the
server prints, or by pasting an API token into the form) and then holds a session cookie;
every page is read as that user, with the same visibility rules as the API.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jwt
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from .auth import _ALGORITHM, _ISSUER, Identity, TokenError, issue_token, verify_token
from .filters import FilterError, parse_filters
from .store import NotFound, Store

__all__ = ["issue_login_code", "web_routes"]

COOKIE = "simvue_otel_session"
_LOGIN_USE = "web-login"
_STATUSES = ("created", "running", "completed", "failed", "terminated", "lost")

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


def issue_login_code(secret: str, identity: Identity, *, minutes: float = 60.0) -> str:
    """A short-lived sign-in code for the web view (refused as an API token)."""
    now = int(time.time())
    claims = {
        "sub": identity.user,
        "tenant": identity.tenant,
        "iss": _ISSUER,
        "use": _LOGIN_USE,
        "iat": now,
        "exp": now + int(minutes * 60),
    }
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


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
        return pad + (x - x0) / (x1 - x0) * (width - pad - 10)

    def sy(y: float) -> float:
        return height - 25 - (y - y0) / (y1 - y0) * (height - 35)

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


def web_routes(store: Store) -> list[Route]:
    """The routes of the web view, reading through ``store`` with each user's visibility."""
    secret = store.secret()

    def identity(request: Request) -> Identity | None:
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        try:
            who = verify_token(secret, f"Bearer {token}")
        except TokenError:
            return None
        return who if store.user_exists(who) else None

    def to_login(request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    def session(who: Identity, target: str) -> Response:
        response = RedirectResponse(target if target.startswith("/") else "/", status_code=303)
        response.set_cookie(
            COOKIE,
            issue_token(secret, who.user, who.tenant, lifetime_days=7),
            max_age=7 * 86400,
            httponly=True,
            samesite="strict",
        )
        return response

    async def login(request: Request) -> Response:
        target = request.query_params.get("next", "/")
        code = request.query_params.get("code")
        error = ""
        if request.method == "POST":
            # An urlencoded form, read without a multipart parser (a dependency we can skip).
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            token = (form.get("token") or [""])[0].strip()
            target = (form.get("next") or ["/"])[0]
            try:
                who = verify_token(secret, f"Bearer {token}")
                if store.user_exists(who):
                    return session(who, target)
                error = "the token's user does not exist on this server"
            except TokenError as exc:
                error = str(exc)
        elif code:
            try:
                claims = jwt.decode(code, secret, algorithms=[_ALGORITHM], issuer=_ISSUER)
                if claims.get("use") != _LOGIN_USE:
                    raise jwt.InvalidTokenError
                who = Identity(str(claims["sub"]), str(claims.get("tenant") or "default"))
                if store.user_exists(who):
                    return session(who, target)
                error = "the sign-in link's user does not exist on this server"
            except jwt.ExpiredSignatureError:
                error = "this sign-in link has expired: restart the server or paste a token"
            except (jwt.InvalidTokenError, KeyError):
                error = "this sign-in link is not valid for this server"
        body = (
            "<h2>Sign in</h2>"
            + (f'<p style="color:#c0392b">{_e(error)}</p>' if error else "")
            + '<form method="post" action="/login"><p>Paste a token (the SIMVUE_TOKEN the '
            "server printed, or one from <code>simvue-otel server token</code>):</p>"
            '<textarea name="token" rows="4" cols="80"></textarea>'
            f'<input type="hidden" name="next" value="{_e(target)}"><p>'
            '<button type="submit">Sign in</button></p></form>'
        )
        return _page("Sign in", body)

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def runs(request: Request) -> Response:
        who = identity(request)
        if who is None:
            return to_login(request)
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
            return _page("Runs", f"<p>{_e(exc)}</p>", who)
        found, total = store.list_runs(
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

    async def run_page(request: Request) -> Response:
        who = identity(request)
        if who is None:
            return to_login(request)
        run_id = request.path_params["run_id"]
        try:
            run = store.get_run(who, run_id)
        except NotFound:
            message = "<h2>No such run</h2><p>It does not exist, or it is not visible to you.</p>"
            return _page("Not found", message, who, status=404)
        x_axis = request.query_params.get("x", "step")
        if x_axis not in ("step", "time"):
            x_axis = "step"
        names = store.metric_names(who, [run_id])
        series = store.get_metrics(who, [run_id], names, x_axis).get(run_id, {})
        events, _ = store.get_events(who, run_id, lambda *_: True, 0, None)
        vis = run.get("visibility") or {}
        shared = (
            "public" if vis.get("public") else "tenant" if vis.get("tenant") else "private"
        ) + (f"; users: {', '.join(vis.get('users') or [])}" if vis.get("users") else "")
        metadata = "".join(
            f"<tr><td>{_e(k)}</td><td>{_e(json.dumps(v))}</td></tr>"
            for k, v in sorted(_flat(run.get("metadata") or {}).items())
        )

        def plots(group: list[str]) -> str:
            return "".join(
                f'<div class="plot" data-metric="{_e(name)}"><h4>{_e(name)}</h4>'
                + svg_plot(
                    [(float(p[x_axis]), float(p["value"])) for p in series.get(name, [])],
                    x_label=x_axis,
                )
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

    return [
        Route("/", runs, methods=["GET"]),
        Route("/runs/{run_id}", run_page, methods=["GET"]),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["GET"]),
    ]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
