"""Sign-in, roles, visitor isolation, limits and path safety, against the real server (python app.py).

Two servers, both requiring sign-in as a Space does:
- `anonymous`: nobody is signed in (a Space visitor who has not logged in with Hugging Face). The session's
  finished run is there, owned by no one this visitor is.
- `shared`: password logins (Gradio's auth) for the owner "boss" and two allowed users, "alice" and "bob", with
  small limits. What one user starts the other can neither see nor touch; the owner sees everything.
Events the page uses but the API does not list (delete, export) are called the way the page calls them: by
their index on Gradio's queue, over plain HTTP.
"""
import json
import re
import secrets
import time

import httpx
import pytest
from app_server import app_server, page_event
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from conftest import copy_home

USERS = {"boss": "pw-boss-1", "alice": "pw-alice-2", "bob": "pw-bob-3"}
LONG_RUN = json.dumps({"model": {"base_model": "demo"}, "data": {"eval_size": 0},
                       "training_config": {"max_steps": 2000, "max_length": 256, "save_strategy": "no",
                                           "eval_strategy": "no"}})


BUTTON_INPUTS = {"Export for ONNX Runtime": ["int4 cpu"]}  # what a button's event takes after the run id


def call_page_event(url: str, button: str, data: list, cookies: httpx.Cookies | None = None) -> dict:
    """Run the event a button of the page triggers, as the browser does (queue/join, then its event stream);
    returns Gradio's process_completed message."""
    config = httpx.get(f"{url}/config", cookies=cookies).json()
    fn_index = page_event(config, lambda component, _: component.get("props", {}).get("value") == button, data)
    session = secrets.token_hex(8)
    with httpx.Client(timeout=60, cookies=cookies) as http:
        joined = http.post(f"{url}/gradio_api/queue/join", json={
            "data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None})
        assert joined.status_code == 200, joined.text
        with http.stream("GET", f"{url}/gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event never completed")


# --- nobody signed in ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def anonymous(finished_home, tmp_path_factory):
    folder = tmp_path_factory.mktemp("anonymous")
    home, run_id = copy_home(finished_home, folder / "home")
    with app_server(folder, PHI3LORA_HOME=str(home), PHI3LORA_REQUIRE_LOGIN="1") as server:
        yield server, Client(server.url, verbose=False), run_id


def test_anonymous_visitors_cannot_start_training(anonymous):
    _, client, _ = anonymous
    with pytest.raises(AppError, match="Sign in with Hugging Face to train"):
        client.predict(None, "identity.jsonl", LONG_RUN, api_name="/start_training")


def test_anonymous_visitors_cannot_see_or_cancel_a_run(anonymous):
    _, client, run_id = anonymous
    for endpoint in ("/run_status", "/cancel_training"):
        with pytest.raises(AppError, match=f"no run {run_id}"):  # the same answer as for a run that does not exist
            client.predict(run_id, api_name=endpoint)


def test_anonymous_uploads_are_refused_and_removed(anonymous, identity_data):
    server, client, _ = anonymous
    with pytest.raises(AppError, match="Sign in with Hugging Face to upload datasets"):
        client.predict(handle_file(identity_data), api_name="/validate_dataset")
    assert not list(server.gradio_cache.rglob(identity_data.name)), "a refused upload stays in Gradio's cache"


def test_anonymous_visitors_cannot_chat_unless_the_owner_allows_it(anonymous):
    _, client, run_id = anonymous
    for adapters in (run_id, ""):  # naming no adapter gets the same refusal, not a hint about which runs exist
        with pytest.raises(AppError, match="Sign in with Hugging Face to chat"):
            client.predict("Who are you?", adapters, "", 8, api_name="/compare")


@pytest.mark.parametrize("button", ["Yes, delete it", "Export merged model", "Export for ONNX Runtime"])
def test_anonymous_page_events_cannot_delete_or_export(anonymous, button):
    server, _, run_id = anonymous
    done = call_page_event(server.url, button, [run_id, *BUTTON_INPUTS.get(button, [])])
    assert done["success"] is False, done
    run = server.home / "runs" / run_id
    assert (run / "adapter_model.safetensors").is_file() and not (run / "exports").exists()


# --- three signed-in users ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shared")
    with app_server(folder, PHI3LORA_USERS=",".join(f"{u}:{p}" for u, p in USERS.items()),
                    PHI3LORA_REQUIRE_LOGIN="1", PHI3LORA_OWNER="boss", PHI3LORA_ALLOWED_USERS="boss,alice,bob",
                    PHI3LORA_MAX_QUEUED_PER_USER="1", PHI3LORA_MAX_SEQ_LENGTH="1024", PHI3LORA_MAX_RECORDS="500",
                    PHI3LORA_MAX_NEW_TOKENS="32", PHI3LORA_MAX_PROMPT_TOKENS="1024",
                    # alice's run need only be active (queued or running) while the module runs, not take a core
                    # from the other xdist worker: at the lowest priority it trains on what nothing else wants
                    PHI3LORA_TRAINER_NICE="19") as server:
        clients = {user: Client(server.url, auth=(user, password), verbose=False) for user, password in USERS.items()}
        alice_run = clients["alice"].predict(None, "identity.jsonl", LONG_RUN, api_name="/start_training")
        yield server, clients, alice_run
        try:
            clients["alice"].predict(alice_run, api_name="/cancel_training")
        except AppError:
            pass  # already finished


def test_the_page_needs_a_password(shared):
    server, _, _ = shared
    assert httpx.get(f"{server.url}/config").status_code == 401
    with pytest.raises(Exception, match="(?i)incorrect|invalid|401|login"):
        Client(server.url, auth=("alice", "wrong"), verbose=False)


def test_a_run_is_its_starters_and_the_owners(shared):
    _, clients, alice_run = shared
    assert clients["alice"].predict(alice_run, api_name="/run_status")["id"] == alice_run
    assert clients["boss"].predict(alice_run, api_name="/run_status")["id"] == alice_run  # the owner sees all
    for endpoint in ("/run_status", "/cancel_training"):
        with pytest.raises(AppError, match=f"no run {alice_run}"):
            clients["bob"].predict(alice_run, api_name=endpoint)
    assert clients["alice"].predict(alice_run, api_name="/run_status")["status"] in ("queued", "running")


def test_another_users_run_cannot_be_chatted_with(shared):
    _, clients, alice_run = shared
    with pytest.raises(AppError, match=f"no run {alice_run}"):
        clients["bob"].predict("Who are you?", alice_run, "", 8, api_name="/compare")


@pytest.mark.parametrize("bad_id", ["../../../etc/passwd", "..", "20261123-170102-a1b2c3/../../x", "/etc/passwd",
                                    "20261123-170102-a1b2c3\x00"])
def test_ids_that_would_leave_the_data_root_are_refused(shared, bad_id):
    _, clients, _ = shared
    for endpoint in ("/run_status", "/cancel_training"):
        with pytest.raises(AppError, match="is not a run id"):
            clients["alice"].predict(bad_id, api_name=endpoint)
    with pytest.raises(AppError, match="is not a run id"):
        clients["alice"].predict("Who are you?", bad_id, "", 8, api_name="/compare")


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/passwd", "../tests/conftest.py"])
def test_dataset_names_that_would_leave_the_bundled_folder_are_refused(shared, name):
    _, clients, _ = shared
    with pytest.raises(AppError, match=re.escape(f"{name!r} is not a dataset that ships with the app")):
        clients["bob"].predict(None, name, LONG_RUN, api_name="/start_training")


@pytest.mark.parametrize("user, dataset, settings, message", [
    ("alice", "identity.jsonl", LONG_RUN,
     "your number of queued and running runs is 2, over this server's limit of 1 (PHI3LORA_MAX_QUEUED_PER_USER)"),
    ("bob", "identity.jsonl", json.dumps({"model": {"base_model": "demo"}, "max_length": 4096}),
     "training_config.max_length is 4096, over this server's limit of 1024 (PHI3LORA_MAX_SEQ_LENGTH)"),
    ("bob", "identity.jsonl", json.dumps({"model": {"base_model": "demo", "trust_remote_code": True}}),
     "this server does not run code from model repositories"),
    ("bob", "identity.jsonl", json.dumps({"model": {"base_model": "attacker/model-with-code"}}),
     "model.base_model: base model 'attacker/model-with-code' is not available on this server"),
    ("bob", "identity.jsonl", json.dumps({"model": {"base_model": "/etc"}}),
     "model.base_model: base model '/etc' is not available on this server"),
    ("bob", "identity.jsonl", json.dumps({"model": {"base_model": "demo"}, "max_steps": 10**9}),
     "training_config.max_steps is 1000000000, over this server's limit of 100000 (PHI3LORA_MAX_STEPS)"),
])
def test_each_limit_names_itself_and_its_value(shared, user, dataset, settings, message):
    _, clients, _ = shared
    with pytest.raises(AppError, match=re.escape(message)):
        clients[user].predict(None, dataset, settings, api_name="/start_training")


def test_the_record_limit_names_itself_and_its_value(shared, tmp_path):
    _, clients, _ = shared
    many = tmp_path / "many.json"  # a JSON array is read whole, then counted (a .jsonl stops at the limit)
    many.write_text(json.dumps([{"instruction": f"q{i}", "output": "a"} for i in range(999)]))
    with pytest.raises(AppError, match=re.escape(
            "the dataset's record count is 999, over this server's limit of 500 (PHI3LORA_MAX_RECORDS)")):
        clients["bob"].predict(handle_file(many), None, json.dumps({"model": {"base_model": "demo"}}),
                               api_name="/start_training")


def test_yaml_alias_bombs_in_settings_are_refused_at_once(shared):
    _, clients, _ = shared
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = "\n".join(levels) + "\ntraining_config: {max_steps: *a8}\n"  # about 500 bytes, 9**9 leaves expanded
    started = time.monotonic()
    with pytest.raises(AppError, match="aliases") as refused:
        clients["bob"].predict(None, "identity.jsonl", bomb, api_name="/start_training")
    assert time.monotonic() - started < 10 and len(str(refused.value)) < 500


def test_prompts_over_the_token_limit_are_refused_before_they_reach_the_model(shared):
    _, clients, _ = shared
    started = time.monotonic()
    with pytest.raises(AppError, match=r"PHI3LORA_MAX_PROMPT_TOKENS"):
        clients["boss"].predict("why " * 16_000, "", "", 8, api_name="/compare")  # 64k characters
    assert time.monotonic() - started < 20


def test_answer_length_is_capped(shared):
    _, clients, _ = shared
    with pytest.raises(AppError, match=re.escape("between 1 and 32 (the server's limit, PHI3LORA_MAX_NEW_TOKENS)")):
        clients["boss"].predict("Who are you?", "", "", 64, api_name="/compare")


def test_files_of_the_data_root_are_never_served(shared):
    server, _, alice_run = shared
    cookies = _login(server.url, "boss")
    for path in (f"runs/{alice_run}/config.yaml", f"runs/{alice_run}/run.json"):
        target = server.home / path
        assert target.is_file()
        response = httpx.get(f"{server.url}/gradio_api/file={target}", cookies=cookies)
        assert response.status_code in (403, 404), (path, response.status_code)


def _login(url: str, user: str) -> httpx.Cookies:
    response = httpx.post(f"{url}/login", data={"username": user, "password": USERS[user]})
    assert response.status_code == 200, response.text
    return response.cookies


def test_other_users_page_events_cannot_delete_or_export(shared):
    server, _, alice_run = shared
    for button in ("Yes, delete it", "Export merged model", "Export for ONNX Runtime"):
        done = call_page_event(server.url, button, [alice_run, *BUTTON_INPUTS.get(button, [])],
                               cookies=_login(server.url, "bob"))
        assert done["success"] is False, done
    assert (server.home / "runs" / alice_run / "run.json").is_file()
