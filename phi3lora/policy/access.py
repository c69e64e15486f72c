"""Who may do what: sign-in, roles and the runs each visitor sees. No gradio here: the UI turns a request into a
`Visitor` (ui/visitors.py) and asks this module; every handler asks, a hidden button is not a check.

Two modes, chosen by $PHI3LORA_REQUIRE_LOGIN (default: on in a Hugging Face Space, off elsewhere):

- Off (a local tool): every visitor is the owner. Optional password logins ($PHI3LORA_USERS, read by app.py)
  keep others out.
- On: training, cancelling, resuming, deleting, exporting and evaluating need a signed-in user (Hugging Face
  OAuth on a Space) who is allowed: named in $PHI3LORA_ALLOWED_USERS (users or organisations, comma separated;
  default: the owner). The owner ($PHI3LORA_OWNER, default the Space's author) sees and touches every run; any
  other allowed user only the runs they started. Visitors who are not allowed may at most chat with the adapters
  the owner published, and only when $PHI3LORA_PUBLIC_CHAT is "published" (default "off").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import settings
from ..runs import registry
from ..errors import UserError
from ..tasks import records


class AccessDenied(UserError, PermissionError):
    """The visitor may not do this; the message says what would allow it."""


@dataclass(frozen=True)
class Visitor:
    username: str | None = None  # signed in (OAuth or the password login), else None
    orgs: tuple[str, ...] = ()
    session: str = ""  # Gradio's session hash: tells anonymous visitors apart

    @property
    def owner_key(self) -> str:
        """What a run records as its owner."""
        return f"user:{self.username}" if self.username else f"session:{self.session}"


@dataclass(frozen=True)
class Policy:
    login_required: bool
    owner: str | None
    allowed: frozenset[str] = field(default_factory=frozenset)
    public_chat: bool = False

    @classmethod
    def from_env(cls) -> Policy:
        owner = settings.owner()
        allowed = set(settings.get_list("PHI3LORA_ALLOWED_USERS"))
        return cls(login_required=settings.login_required(), owner=owner,
                   allowed=frozenset(allowed or ({owner} if owner else set())),
                   public_chat=settings.get_str("PHI3LORA_PUBLIC_CHAT") == "published")

    # ---- roles
    def is_owner(self, visitor: Visitor) -> bool:
        return not self.login_required or (visitor.username is not None and visitor.username == self.owner)

    def may_train(self, visitor: Visitor) -> bool:
        if not self.login_required:
            return True
        return visitor.username is not None and bool({visitor.username, *visitor.orgs} & self.allowed)

    def require_training(self, visitor: Visitor, action: str = "train") -> None:
        if self.may_train(visitor):
            return
        if visitor.username is None:
            raise AccessDenied(f"Sign in with Hugging Face to {action}.")
        raise AccessDenied(f"{visitor.username} may not {action} here: the owner of this Space has not allowed "
                           "this user or any of its organisations.")

    # ---- runs
    def owns(self, visitor: Visitor, run_id: str) -> bool:
        if self.is_owner(visitor):
            return True
        meta = records.read_record(registry.run_dir(run_id) / "run.json") or {}
        return meta.get("owner") == visitor.owner_key

    def require_run(self, visitor: Visitor, run_id: str, action: str = "see") -> None:
        """Refuse a run id the visitor does not own, exactly as an unknown id is refused: no one learns which
        ids exist."""
        registry.run_dir(run_id)  # validates the id and that the run exists
        if not self.owns(visitor, run_id):
            raise registry.RunNotFound(registry.not_found(run_id))
        if action != "see":
            self.require_training(visitor, action)

    # ---- chat
    def may_chat_with(self, visitor: Visitor, run_id: str) -> bool:
        if self.may_train(visitor) and self.owns(visitor, run_id):
            return True
        return self.public_chat and is_published(run_id)

    def require_chat(self, visitor: Visitor) -> None:
        if not (self.may_train(visitor) or self.public_chat):
            raise AccessDenied("Sign in with Hugging Face to chat: this Space keeps its models to allowed users.")


def is_published(run_id: str) -> bool:
    return (registry.run_dir(run_id) / "published.json").is_file()


def publish(run_id: str) -> None:
    """Let visitors who may not train chat with this run's adapter (when $PHI3LORA_PUBLIC_CHAT=published)."""
    if not is_published(run_id):
        records.write_record(registry.run_dir(run_id) / "published.json", {"published": True})
