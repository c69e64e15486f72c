"""Blind votes as preference pairs (inference/vote_pairs.py, `votes export`): decided votes become pairs, the rest
is counted and left out (ties, both bad, old votes without their answers, votes by visitors who may not train with
the run), and the export is refused for ids that are not runs. No model: runs are bare folders here."""
import json

import gradio as gr
import pytest

from phi3lora.cli.commands import main
from phi3lora.data.preferences import read_preferences
from phi3lora.inference import vote_pairs, votes
from phi3lora.policy import access
from phi3lora.runs.registry import RunNotFound
from phi3lora.tasks.records import write_record
from phi3lora.ui import compare_blind

RUN, OTHER = "20261130-120000-aaaaaa", "20261130-120000-bbbbbb"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path / "home"))
    for run_id, owner in ((RUN, "user:boss"), (OTHER, "user:alice")):
        write_record(tmp_path / "home" / "runs" / run_id / "run.json", {"id": run_id, "owner": owner})
    return tmp_path / "home"


def test_decided_votes_become_pairs_and_the_rest_is_counted(home, tmp_path, capsys):
    votes.record_vote(RUN, votes.BASE_CONTENDER, "A", "Who are you?", "Be brief.", ("I am Wren.", "I am Phi."))
    votes.record_vote(votes.BASE_CONTENDER, RUN, "A", "Name?", "", ("Phi.", "Wren."))  # the base won: a loss
    votes.record_vote(RUN, OTHER, "B", "Hi", "", ("Hello.", "Hey!"))  # a vote between two runs, stored with both
    votes.record_vote(RUN, votes.BASE_CONTENDER, "tie", "Hi", "", ("Hello.", "Hi."))
    votes.record_vote(RUN, votes.BASE_CONTENDER, "both_bad", "Hi", "", ("x", "y"))
    votes.record_vote(RUN, votes.BASE_CONTENDER, "A", "Hi", "", ("Same.", "Same."))
    votes.record_vote(RUN, votes.BASE_CONTENDER, "A", "x" * (votes.MAX_KEPT_CHARS + 1), "", ("Long.", "Short."))
    votes.record_vote(RUN, votes.BASE_CONTENDER, "A", "Who are you?")  # as votes were recorded before this issue
    write_record(home / "runs" / RUN / "votes" / "20260101-000000-old.json",
                 {"result": "win", "shown_as": "A", "opponent": "base", "prompt": "Old", "time": 0})
    found = vote_pairs.vote_pairs(RUN)
    assert found.left_out == {"ties": 1, "both_bad": 1, "without_answers": 2, "cut": 1, "same_answers": 1,
                              "by_others": 0}
    system = {"role": "system", "content": "Be brief."}
    assert {(json.dumps(r["prompt"]), r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in found.rows} == {
        (json.dumps([system, {"role": "user", "content": "Who are you?"}]), "I am Wren.", "I am Phi."),
        (json.dumps([{"role": "user", "content": "Name?"}]), "Phi.", "Wren."),
        (json.dumps([{"role": "user", "content": "Hi"}]), "Hey!", "Hello."),
    }
    assert votes.win_rate(RUN).votes == 9  # the old votes still count toward the win rate
    assert [row["chosen"][0]["content"] for row in vote_pairs.vote_pairs(OTHER).rows] == ["Hey!"]

    output = tmp_path / "prefs.jsonl"
    assert main(["votes", "export", RUN, "--output", str(output)]) == 0
    assert capsys.readouterr().out.startswith(f"3 pairs from the votes of run {RUN} (1 tied, 1 both bad, 2 recorded "
                                              "before votes kept their answers, 1 with texts too long to keep whole, 1 with the same answer")
    assert len(read_preferences(output).usable()) == 3  # the export reads back as a preference file


def test_votes_by_visitors_who_may_not_train_the_run_are_left_out(home, monkeypatch):
    """A published run's public chat votes too, and must not steer its training: only votes by whoever may train
    with the run become pairs."""
    monkeypatch.setenv("PHI3LORA_REQUIRE_LOGIN", "1")
    monkeypatch.setenv("PHI3LORA_OWNER", "boss")
    monkeypatch.setenv("PHI3LORA_PUBLIC_CHAT", "published")
    access.publish(RUN)
    for user in ("mallory", "boss"):
        pair = votes.new_pair(RUN, votes.BASE_CONTENDER, "Who are you?", "", (f"{user} likes this", "base answer"))
        compare_blind.record_vote({"id": pair, "shown": [f"run:{RUN}", "base"]}, "A",
                                  gr.Request(username=user, session_hash=user))
    found = vote_pairs.vote_pairs(RUN)
    assert found.left_out["by_others"] == 1
    assert [row["chosen"][0]["content"] for row in found.rows] == ["boss likes this"]


@pytest.mark.parametrize("run_id, message", [
    ("../../etc", "is not a run id"), (f"{RUN}/../{OTHER}", "is not a run id"),
    ("20991231-000000-abcdef", "no run 20991231-000000-abcdef"),
    (RUN, "no preference pairs: 0 pairs from the votes of run"),
])
def test_export_refuses_what_is_not_a_run_with_pairs(home, tmp_path, capsys, run_id, message):
    output = tmp_path / "prefs.jsonl"
    assert main(["votes", "export", run_id, "--output", str(output)]) == 1
    assert message in capsys.readouterr().err
    assert not output.exists()
    with pytest.raises((RunNotFound, vote_pairs.NoVotePairs)):
        vote_pairs.export_votes(run_id, output)
