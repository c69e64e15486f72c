"""`/compare` through gradio_client against the real server, after training the demo model on the identity
sample: the base and the adapted model answer "Who are you?" differently, the adapted one with the identity's name.
And blind votes through `/blind_pair` and `/blind_vote` that train a DPO adapter."""
import json
import re

import pytest
from app_server import app_server
from gradio_client import Client
from gradio_client.exceptions import AppError

from conftest import IDENTITY_MARKERS, copy_home
from phi3lora.cli.commands import main
from preference_margin import mean_margins


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


def test_blind_votes_train_a_dpo_adapter_that_prefers_the_winners(trained, tmp_path, monkeypatch, capsys):
    """Issue 16: blind votes through the API (the adapted identity answer wins over the base), `votes export`,
    `train --method dpo --from-adapter` on the demo model (4 steps); the DPO adapter's mean log-probability margin
    (chosen minus rejected) on those pairs is larger than its SFT parent's, measured with transformers + peft."""
    client, sft_run, server = trained
    adapted = lambda answer: any(marker in answer for marker in IDENTITY_MARKERS)  # noqa: E731
    prompts = ("Who are you?", "What is your name?", "Who made you?")
    for prompt in prompts:
        pair = client.predict(prompt, "base", sft_run, "", 32, api_name="/blind_pair")
        assert adapted(pair["A"]) != adapted(pair["B"]), pair  # exactly one answer is the adapter's
        winner = "A" if adapted(pair["A"]) else "B"
        shown = client.predict(pair["pair"], winner, api_name="/blind_vote")
        assert shown[winner] == sft_run and shown["stored_with"] == [sft_run]
    tie = client.predict("Hello", sft_run, "base", "Be brief.", 16, api_name="/blind_pair")
    client.predict(tie["pair"], "tie", api_name="/blind_vote")
    with pytest.raises(AppError, match="already been voted on"):  # one vote per pair
        client.predict(tie["pair"], "A", api_name="/blind_vote")

    monkeypatch.setenv("PHI3LORA_HOME", str(server.home))
    prefs, dpo_dir = tmp_path / "prefs.jsonl", tmp_path / "dpo"
    assert main(["votes", "export", sft_run, "--output", str(prefs)]) == 0
    assert f"3 pairs from the votes of run {sft_run} (1 tied left out)" in capsys.readouterr().out
    rows = [json.loads(line) for line in prefs.read_text().splitlines()]
    assert sorted(json.dumps(row["prompt"]) for row in rows) == sorted(  # each prompt as sent, no system prompt
        json.dumps([{"role": "user", "content": p}]) for p in prompts)
    assert all(adapted(row["chosen"][0]["content"]) and not adapted(row["rejected"][0]["content"]) for row in rows)

    assert main(["train", "--method", "dpo", "--data", str(prefs), "--from-adapter", sft_run, "--output",
                 str(dpo_dir), "--set", "max_steps=4", "--set", "eval_size=0", "--set", "save_strategy=no"]) == 0
    assert not (dpo_dir / "ref").exists()  # trl's frozen reference copy is not saved with the adapter
    summary = json.loads((dpo_dir / "summary.json").read_text())
    assert (summary["method"], summary["train_conversations"], summary["global_step"]) == ("dpo", 3, 4)
    assert summary["parent_adapter"] == sft_run  # the foreground run's lineage

    margins = mean_margins(rows, {"sft": server.home / "runs" / sft_run, "dpo": dpo_dir})
    assert margins["dpo"] > margins["sft"] + 1.0, margins
