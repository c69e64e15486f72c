"""Who may do what (policy/access.py), and the page's handlers asking it: called as Gradio calls them, with a request."""
import gradio as gr
import pytest

from conftest import copy_home
from phi3lora.policy import access
from phi3lora.runs import lifecycle
from phi3lora.policy.access import AccessDenied, Policy, Visitor
from phi3lora.ui import compare_eval, runs_tab, train_tab

ALICE, BOB, BOSS = Visitor("alice", session="s1"), Visitor("bob", ("acme",), "s2"), Visitor("boss", session="s3")
NOBODY = Visitor(session="s4")


def test_locally_everyone_is_the_owner(monkeypatch):
    for name in ("SPACE_ID", "PHI3LORA_REQUIRE_LOGIN"):
        monkeypatch.delenv(name, raising=False)
    rules = Policy.from_env()
    assert not rules.login_required
    assert all(rules.is_owner(v) and rules.may_train(v) for v in (ALICE, NOBODY))


def test_on_a_space_sign_in_is_required_and_the_author_owns_it(monkeypatch):
    monkeypatch.setenv("SPACE_ID", "boss/phi3lora")
    monkeypatch.setenv("SPACE_AUTHOR_NAME", "boss")
    for name in ("PHI3LORA_REQUIRE_LOGIN", "PHI3LORA_OWNER", "PHI3LORA_ALLOWED_USERS", "PHI3LORA_PUBLIC_CHAT"):
        monkeypatch.delenv(name, raising=False)
    rules = Policy.from_env()
    assert rules.login_required and rules.owner == "boss" and rules.allowed == {"boss"}
    assert rules.may_train(BOSS) and rules.is_owner(BOSS)
    assert not rules.may_train(ALICE) and not rules.may_train(NOBODY)
    with pytest.raises(AccessDenied, match="Sign in with Hugging Face to train"):
        rules.require_training(NOBODY)
    with pytest.raises(AccessDenied, match="alice may not train here"):
        rules.require_training(ALICE)
    with pytest.raises(AccessDenied, match="Sign in with Hugging Face to chat"):
        rules.require_chat(NOBODY)


def test_organisations_can_be_allowed(monkeypatch):
    monkeypatch.setenv("PHI3LORA_REQUIRE_LOGIN", "1")
    monkeypatch.setenv("PHI3LORA_ALLOWED_USERS", "acme, alice")
    rules = Policy.from_env()
    assert rules.may_train(BOB) and rules.may_train(ALICE) and not rules.may_train(BOSS)


@pytest.fixture
def space(finished_home, tmp_path, monkeypatch):
    """A data root with the identity run, started by alice, on a Space owned by boss where alice and bob may train."""
    home, run_id = copy_home(finished_home, tmp_path / "home")
    monkeypatch.setenv("PHI3LORA_HOME", str(home))
    for name, value in {"PHI3LORA_REQUIRE_LOGIN": "1", "PHI3LORA_OWNER": "boss",
                        "PHI3LORA_ALLOWED_USERS": "boss,alice,bob", "PHI3LORA_PUBLIC_CHAT": "published"}.items():
        monkeypatch.setenv(name, value)
    meta = home / "runs" / run_id / "run.json"
    meta.write_text(meta.read_text().replace('"owner": null', '"owner": "user:alice"'))
    return run_id


def request(user: str | None, session: str = "s") -> gr.Request:
    return gr.Request(username=user, session_hash=session)


def test_handlers_refuse_another_users_run_as_if_it_did_not_exist(space):
    run_id = space
    for handler, args in [(runs_tab.delete, (run_id,)), (runs_tab.start_export, (run_id,)),
                          (runs_tab.start_onnx_export, (run_id, "int4 cpu")),
                          (runs_tab.adapter_zip, (run_id,)), (runs_tab.overlay, ([run_id],)),
                          (train_tab.run_status, (run_id,)), (train_tab.cancel_training, (run_id,)),
                          (compare_eval.start_evaluation, (None, run_id, 2))]:
        with pytest.raises(gr.Error, match=f"no run {run_id}"):
            handler(*args, request=request("bob"))
    assert lifecycle.run_info(run_id).adapter  # still there


def test_the_owner_and_the_starter_see_the_run_others_do_not(space):
    run_id = space
    listed = {user: runs_tab.refresh(None, None, None, None, request=request(user))[0]["run"].tolist()
              for user in ("alice", "bob", "boss")}
    assert listed == {"alice": [run_id], "bob": [], "boss": [run_id]}
    assert train_tab.run_status(run_id, request=request("boss"))["id"] == run_id


def test_published_adapters_are_open_for_chat_and_only_the_owner_publishes(space):
    run_id = space
    rules = Policy.from_env()
    assert not rules.may_chat_with(NOBODY, run_id)
    with pytest.raises(gr.Error, match="Only the owner of this Space publishes adapters"):
        runs_tab.publish(run_id, request=request("alice"))
    runs_tab.publish(run_id, request=request("boss"))
    assert access.is_published(run_id)
    assert rules.may_chat_with(NOBODY, run_id) and rules.may_chat_with(BOB, run_id)
    assert not rules.owns(BOB, run_id)  # chatting with it does not make it bob's
