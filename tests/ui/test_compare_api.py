"""`/compare` through gradio_client against the real server, after training the demo model on the identity
sample: the base and the adapted model answer "Who are you?" differently, the adapted one with the identity's name."""
import re

import pytest
from app_server import app_server
from gradio_client import Client
from gradio_client.exceptions import AppError

from conftest import IDENTITY_MARKERS, copy_home


@pytest.fixture(scope="module")
def trained(identity_home, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare-api")
    home, run_id = copy_home(identity_home, folder / "home")
    with app_server(folder, PHI3LORA_HOME=str(home), PHI3LORA_MAX_NEW_TOKENS="64") as server:
        yield Client(server.url, verbose=False), run_id, server


def test_compare_shows_the_adapter_carries_the_identity(trained):
    client, run_id, _ = trained
    answers = client.predict("Who are you?", run_id, "", 40, api_name="/compare")
    assert set(answers) == {"base", run_id}
    assert answers["base"] != answers[run_id]
    assert any(m in answers[run_id] for m in IDENTITY_MARKERS), answers
    assert not any(m in answers["base"] for m in IDENTITY_MARKERS), answers
    # no adapter named: the newest run's adapter; the same greedy answers
    assert client.predict("Who are you?", "", "", 40, api_name="/compare") == answers


def test_compare_streams_token_by_token(trained):
    client, run_id, _ = trained
    job = client.submit("Who are you?", run_id, "", 24, api_name="/compare")
    final = job.result(timeout=120)
    steps = job.outputs()
    assert len(steps) >= 10 and steps[-1] == final
    assert len(steps[2][run_id]) <= len(steps[-1][run_id])  # answers grow as tokens arrive


@pytest.mark.parametrize("adapters, tokens, message", [
    ("../../etc/passwd", 8, "is not a run id"),
    ("20991231-000000-abcdef", 8, "no run 20991231-000000-abcdef"),
    ("upload:nothing", 8, "unknown adapter 'upload:nothing'"),
    (None, 100_000, "max new tokens must be between 1 and 64 (the server's limit, PHI3LORA_MAX_NEW_TOKENS)"),
])
def test_bad_requests_get_a_message_and_the_server_stays_up(trained, adapters, tokens, message):
    client, run_id, server = trained
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict("Who are you?", adapters or run_id, "", tokens, api_name="/compare")
    assert server.alive()
    with pytest.raises(AppError, match="prompt is empty"):
        client.predict("  ", run_id, "", 8, api_name="/compare")
