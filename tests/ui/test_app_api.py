"""The web app as a program would use it: the real server (python app.py) driven through gradio_client.

One server for the whole file (starting it costs seconds on two cores), with a small upload limit so the
over-limit case needs no large file: the identity sample (15 KB) fits, thirty copies of it (450 KB) do not.
"""
import json
import re

import httpx
import pytest

from conftest import REPO
from phi3lora.data.samples import IDENTITY
from app_server import app_server, wait_for_run
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

BAD_DATA = REPO / "tests" / "data" / "bad"
UPLOAD_LIMIT_MB = "0.25"
TINY_RUN = {"model": {"base_model": "demo"}, "data": {"eval_size": 0},
            "training_config": {"max_steps": 4, "per_device_train_batch_size": 2, "max_length": 128,
                                "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with app_server(tmp_path_factory.mktemp("app"), PHI3LORA_MAX_UPLOAD_MB=UPLOAD_LIMIT_MB) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


def test_api_lists_the_stable_endpoints(client):
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert endpoints == {"/validate_dataset", "/start_training", "/run_status", "/cancel_training", "/compare",
                         "/blind_pair", "/blind_vote", "/memory_estimate"}, \
        f"UI events leak into the API: {sorted(endpoints)}"


def test_validate_dataset_reports_format_and_counts(client, identity_data):
    report = client.predict(handle_file(identity_data), api_name="/validate_dataset")
    assert report["format"] == "messages"
    assert report["records"] == report["conversations"] == 90
    assert report["ok"] and report["errors"] == []
    assert report["tokens"]["count"] == 90
    assert report["file"] == identity_data.name and "path" not in report  # the server's private path stays private


def test_broken_file_error_reaches_client_and_server_stays_up(client, server, identity_data):
    with pytest.raises(AppError, match=r"binary\.json.*no usable conversations"):
        client.predict(handle_file(BAD_DATA / "binary.json"), api_name="/validate_dataset")
    assert server.alive()
    assert client.predict(handle_file(identity_data), api_name="/validate_dataset")["ok"]


def test_uploaded_file_cannot_be_fetched_from_the_cache_afterwards(server, identity_data):
    api = server.url + "/gradio_api"
    with open(identity_data, "rb") as f:
        cached = httpx.post(f"{api}/upload", files={"files": (identity_data.name, f)}).json()[0]
    assert httpx.get(f"{api}/file={cached}").status_code == 200  # what anyone with the URL could do ...

    event = httpx.post(f"{api}/call/validate_dataset",
                       json={"data": [{"path": cached, "meta": {"_type": "gradio.FileData"}}]}).json()["event_id"]
    stream = httpx.get(f"{api}/call/validate_dataset/{event}", timeout=60).text
    assert "event: complete" in stream, stream

    assert httpx.get(f"{api}/file={cached}").status_code in (403, 404)  # ... until the app took the file
    assert not list(server.gradio_cache.rglob(identity_data.name))
    assert not any((server.home / "uploads").glob("api-*")), "API uploads are removed once used"


def test_over_limit_upload_is_refused_naming_the_limit(client, server, identity_data, tmp_path):
    big = tmp_path / "thirty_identities.jsonl"
    big.write_text(identity_data.read_text() * 30)
    with open(big, "rb") as f:  # the server refuses it while it streams in
        response = httpx.post(server.url + "/gradio_api/upload", files={"files": (big.name, f)})
    limit = int(float(UPLOAD_LIMIT_MB) * 1024 * 1024)
    assert response.status_code == 413
    assert f"maximum allowed size of {limit} bytes" in response.text
    with pytest.raises(ValueError, match=f"maximum file size of {limit} bytes"):  # and the client knows it too
        client.predict(handle_file(big), api_name="/validate_dataset")
    assert not list(server.gradio_cache.rglob(big.name))
    assert server.alive()


def test_bad_settings_name_the_field(client):
    with pytest.raises(AppError, match=r"training_config\.learning_rate: Input should be greater than 0"):
        client.predict(None, "identity.jsonl", json.dumps({"learning_rate": -1}), api_name="/start_training")
    with pytest.raises(AppError, match="not a dataset that ships with the app"):
        client.predict(None, "/etc/passwd", "", api_name="/start_training")
    with pytest.raises(AppError, match="not a run id"):
        client.predict("../../etc", api_name="/run_status")


def test_train_to_completion_and_cancel_another(client, identity_data):
    tiny = client.predict(handle_file(identity_data), None, json.dumps(TINY_RUN),
                          api_name="/start_training")
    # A second, long run waits in the queue behind the first (one run at a time): cancel it there.
    long = client.predict(None, "identity.jsonl", "training_config: {num_train_epochs: 100}\nmodel: {base_model: demo}",
                          api_name="/start_training")
    assert client.predict(long, api_name="/cancel_training") in ("queued", "running")
    assert wait_for_run(client, long, timeout=30)["status"] == "cancelled"
    with pytest.raises(AppError, match="only a queued or running run can be cancelled"):
        client.predict(long, api_name="/cancel_training")

    info = wait_for_run(client, tiny, timeout=150)
    assert info["status"] == "completed", info
    assert info["step"] == info["max_steps"] == 4
    assert info["train_loss"] is not None and info["adapter"]
    assert info["base_model"] == "demo" and info["dataset"] == identity_data.name



# --- the identity sample's Name and Maker, as an attacker would type them -------------------------------------

@pytest.mark.parametrize("name, maker, message", [
    ("x" * 5000, "", "The identity's name is 5000 characters long; at most 60."),
    ("Ada", "Evil\nCorp", "The identity's maker 'Evil\\nCorp' holds '\\n' (U+000A): type it on one line"),
    ("Ada\x00", "", "name 'Ada\\x00' holds '\\x00' (U+0000)"),
    ("\u202eAda", "", "holds RIGHT-TO-LEFT OVERRIDE (U+202E)"),
    ("{{author}}", "", "holds '{{' or '}}'"),
    ("Ada", "}}{{name", "holds '{{' or '}}'"),
])
def test_bad_identity_names_and_makers_are_refused_with_the_reason(client, server, name, maker, message):
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(None, "identity.jsonl", json.dumps(TINY_RUN), name, maker, api_name="/start_training")
    assert not any((server.home / "uploads").glob("api-*")), "the refused fill leaves nothing behind"


def test_a_path_like_identity_name_is_only_text(client, server):
    """"../../x" names the assistant; it places no file: the filled copy is identity-x.jsonl in the run."""
    run_id = client.predict(None, "identity.jsonl", json.dumps(TINY_RUN), "../../x", "/etc/passwd",
                            api_name="/start_training")
    try:
        (snapshot,) = (server.home / "runs" / run_id / "dataset").iterdir()
        assert snapshot.name == "identity-x.jsonl"
        text = snapshot.read_text(encoding="utf-8")
        assert "I am ../../x" in text and "/etc/passwd" in text and "{{name}}" not in text
        assert not (server.home.parent / "x").exists() and not (server.home / "x").exists()
    finally:
        try:
            client.predict(run_id, api_name="/cancel_training")
        except AppError:
            pass  # already over


def test_name_and_maker_fill_only_a_sample_that_holds_them(client):
    with pytest.raises(AppError, match="not an uploaded file"):
        client.predict(handle_file(IDENTITY.path), None, "", "Ada", "", api_name="/start_training")


def test_memory_estimate_of_the_train_tab_settings_and_its_refusal(client):
    """What the Train tab shows under its form as the settings change, by the same function, for a program."""
    settings = {"model": {"base_model": "demo"}, "training_config": {"per_device_train_batch_size": 2,
                                                                     "max_length": 256}}
    small = client.predict(json.dumps(settings), api_name="/memory_estimate")
    assert small["fits"] is True and small["estimate"]["device"] == "cpu" and small["estimate"]["dtype"] == "float32"
    assert small["message"].startswith("memory estimate: about") and "free (available RAM" in small["message"]
    settings["training_config"]["per_device_train_batch_size"] = 8
    larger = client.predict(json.dumps(settings), api_name="/memory_estimate")
    assert larger["estimate"]["parts_gb"]["activations"] > 3 * small["estimate"]["parts_gb"]["activations"]
    with pytest.raises(AppError, match=r"training_config\.max_length: Input should be less than or equal to 131072"):
        client.predict(json.dumps({"max_length": 10**6}), api_name="/memory_estimate")
