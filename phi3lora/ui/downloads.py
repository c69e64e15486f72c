"""Download links on the page (a run's adapter zip, its evaluation CSV), served by a route of our own.

Gradio serves a file an event returns from its cache, to anyone who has the URL, for as long as the file is
there. These files never enter Gradio's cache: each is written to a folder of its own with an unguessable name
(common.download_path, outside the cache and the data root), and the page shows a link to
/phi3lora/download/<token>/<name>. The route answers only
- within $PHI3LORA_DOWNLOAD_SECONDS of the link's making (it survives a restart, never its lifetime);
- behind Gradio's password login ($PHI3LORA_USERS), to a signed-in user;
- when sign-in is required (access.Policy.login_required), to a visitor who may see the run the file comes from
  (Policy.require_run: the run's starter, or the owner), however they signed in (password or Hugging Face).
Anything else gets the same "no such download" answer, so nobody learns which links exist.
"""
from __future__ import annotations

import html
import inspect
import json
import re
import shutil
import time
from pathlib import Path
from urllib.parse import quote

import fastapi
import gradio as gr
from fastapi.responses import FileResponse, PlainTextResponse
from fastapi.routing import APIRoute

from ..policy import limits
from ..errors import UserError
from . import common
from .visitors import policy, visitor_of

ROUTE = "/phi3lora/download"
LINK_RECORD = ".link.json"  # beside the file: which run it comes from; its mtime is the link's birth
TOKEN = re.compile(r"[0-9a-f]{32}")


def lifetime_seconds() -> int:
    return limits.limit("PHI3LORA_DOWNLOAD_SECONDS")


def offer(path: Path, run_id: str) -> gr.HTML:
    """The page's link to `path` (made by common.download_path), for those who may see run `run_id`."""
    (path.parent / LINK_RECORD).write_text(json.dumps({"run": run_id, "name": path.name}), encoding="utf-8")
    href = f"{ROUTE.lstrip('/')}/{path.parent.name}/{quote(path.name)}"  # relative to the page's own address
    name = html.escape(path.name)
    return gr.HTML(f'<a href="{html.escape(href)}" download="{name}">{name}</a> '
                   f"(the link works for {lifetime_seconds() / 60:g} minutes)", visible=True)


def routes() -> list[APIRoute]:
    """For Gradio's FastAPI app (launch(app_kwargs={"routes": ...}))."""
    return [APIRoute(ROUTE + "/{token}/{name}", serve, methods=["GET"], include_in_schema=False)]


async def serve(token: str, name: str, request: fastapi.Request):
    """GET /phi3lora/download/<token>/<name>: the file, for whom and while the module docstring says."""
    record = _live_record(token)
    if record is None or record.get("name") != name:
        return _no_such_download()
    user = await _signed_in_user(request)
    if user is None and _gradio_login_required(request):
        return PlainTextResponse("Sign in first, then use the link again.", status_code=401)
    rules = policy()
    if rules.login_required:
        try:
            rules.require_run(visitor_of(gr.Request(request=request, username=user)), str(record.get("run")))
        except (UserError, ValueError, OSError):
            return _no_such_download()  # not this visitor's run: answered as if the link did not exist
    return FileResponse(common.DOWNLOADS / token / name, filename=name, content_disposition_type="attachment")


def _live_record(token: str) -> dict | None:
    """The link's record, or None for a malformed, unknown or expired token (an expired one is removed)."""
    if not TOKEN.fullmatch(token):
        return None
    path = common.DOWNLOADS / token / LINK_RECORD
    try:
        if time.time() - path.stat().st_mtime > lifetime_seconds():
            shutil.rmtree(path.parent, ignore_errors=True)
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _no_such_download() -> PlainTextResponse:
    return PlainTextResponse(
        f"No such download, or its link has expired: links work for {lifetime_seconds() / 60:g} minutes after "
        "they are made (PHI3LORA_DOWNLOAD_SECONDS). Make a new one on the page.", status_code=404)


async def _signed_in_user(request: fastapi.Request) -> str | None:
    """Who Gradio's password login (or its auth_dependency) says is signed in: Gradio's own lookup (its
    get_current_user in gradio/routes.py, which lives inside App.create_app, out of reach). Hugging Face
    sign-in is read from the session by visitor_of."""
    app = request.app
    if getattr(app, "auth_dependency", None) is not None:
        user = app.auth_dependency(request)
        return await user if inspect.isawaitable(user) else user
    cookie_id = getattr(app, "cookie_id", None)
    token = (request.cookies.get(f"access-token-{cookie_id}")
             or request.cookies.get(f"access-token-unsecure-{cookie_id}"))
    return getattr(app, "tokens", {}).get(token)


def _gradio_login_required(request: fastapi.Request) -> bool:
    app = request.app
    return getattr(app, "auth", None) is not None or getattr(app, "auth_dependency", None) is not None
