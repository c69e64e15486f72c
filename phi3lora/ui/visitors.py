"""Who is asking: a Gradio request turned into an `access.Visitor`, and the checks handlers make with it.

A signed-in user comes from Gradio's password login (request.username) or from Hugging Face OAuth on a Space
(the session's oauth_info); anyone else is anonymous, told apart by their session hash.
"""
from __future__ import annotations

import gradio as gr

from ..policy.access import Policy, Visitor
from ..policy.allowed_models import require_allowed


def policy() -> Policy:
    return Policy.from_env()


def visitor_of(request: gr.Request | None) -> Visitor:
    if request is None:  # called from Python, not over HTTP
        return Visitor()
    username, orgs = request.username, ()
    if not username:
        userinfo = (_oauth_info(request) or {}).get("userinfo") or {}
        username = userinfo.get("preferred_username")
        orgs = tuple(org.get("preferred_username") or org.get("name") for org in userinfo.get("orgs") or [])
    return Visitor(username or None, tuple(o for o in orgs if o), request.session_hash or "")


def _oauth_info(request: gr.Request) -> dict | None:
    try:
        return request.session.get("oauth_info")  # only present when Gradio attached OAuth (hf_oauth Spaces)
    except (AssertionError, AttributeError, KeyError):  # no session middleware: OAuth is off
        return None


def require_training(request: gr.Request | None, action: str = "train") -> Visitor:
    visitor = visitor_of(request)
    policy().require_training(visitor, action)
    return visitor


def require_run(request: gr.Request | None, run_id: str | None, action: str = "see") -> Visitor:
    """The visitor, once they may `action` the run; a page event with no run picked gets "Pick a run first."."""
    if not run_id:
        raise gr.Error("Pick a run first.")
    visitor = visitor_of(request)
    policy().require_run(visitor, run_id, action)
    return visitor


def require_allowed_base(base_model: str | None, what: str = "model.base_model") -> None:
    """On a shared server (sign-in required) only the operator's base models load (policy/allowed_models.py); locally
    the owner may name any model or folder. Empty means the default, which is always allowed."""
    if base_model and policy().login_required:
        require_allowed(base_model, what)
