"""The chat service behind the Compare tab: adapters from runs and zips, one model loaded lazily, the memory
guard, idle release, and blind votes stored with the runs. In-process, on the session's identity run."""
import time
import zipfile

import pytest

from conftest import IDENTITY_MARKERS, copy_home
from phi3lora.inference import votes
from phi3lora.inference.service import (BASE_COLUMN, ChatMemoryError, ChatService, import_adapter_zip, run_adapters)
from phi3lora.inference.adapter_info import AdapterError
from phi3lora.runs.registry import RunNotFound

WHO = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture
def home(identity_home, tmp_path, monkeypatch):
    root, run_id = copy_home(identity_home, tmp_path / "home")
    monkeypatch.setenv("PHI3LORA_HOME", str(root))
    return root, run_id


def _answers(service, refs, max_new_tokens=24, **kwargs):
    adapters = service.resolve(refs)
    columns = [BASE_COLUMN, *refs]
    texts = []
    for texts in service.stream(adapters, columns, [WHO] * len(columns), max_new_tokens=max_new_tokens, **kwargs):
        pass
    return dict(zip(columns, texts))


def test_finished_runs_offer_their_adapters_and_the_model_loads_on_first_use(home):
    _, run_id = home
    [choice] = run_adapters()
    assert choice.ref == f"run:{run_id}" and "identity-wrenfield.jsonl" in choice.label and choice.base_model == "demo"
    service = ChatService()
    assert "No model in memory" in service.status()
    answers = _answers(service, [choice.ref], max_new_tokens=40)
    assert "In memory: demo_model" in service.status()
    assert any(m in answers[choice.ref] for m in IDENTITY_MARKERS), answers
    assert not any(m in answers[BASE_COLUMN] for m in IDENTITY_MARKERS), answers
    assert service.release() and "No model in memory" in service.status()


def test_memory_guard_refuses_with_the_figures_and_a_4bit_hint(home, monkeypatch):
    monkeypatch.setenv("PHI3LORA_CHAT_MEMORY_GB", "0.001")
    service = ChatService()
    with pytest.raises(ChatMemoryError) as refused:
        _answers(service, [f"run:{home[1]}"])
    message = str(refused.value)
    assert "Not enough CPU memory to load demo_model" in message and "0.00 GB is free" in message
    assert "4-bit" in message
    assert "No model in memory" in service.status()  # nothing was loaded


def test_an_idle_model_is_released(home, monkeypatch):
    monkeypatch.setenv("PHI3LORA_CHAT_IDLE_MINUTES", "0.01")  # 0.6 s
    service = ChatService()
    _answers(service, [], max_new_tokens=4)
    deadline = time.monotonic() + 20
    while "In memory" in service.status() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "No model in memory" in service.status()


def test_an_uploaded_adapter_zip_answers_like_its_run(home, tmp_path):
    root, run_id = home
    run = root / "runs" / run_id
    archive = tmp_path / "my adapter.zip"
    with zipfile.ZipFile(archive, "w") as z:  # nested one folder deep, with extra files that are ignored
        for name in ("adapter_config.json", "adapter_model.safetensors", "config.yaml"):
            z.write(run / name, f"adapter/{name}")
        z.writestr("adapter/../../escape.txt", "never extracted")
    choice = import_adapter_zip(archive)
    assert choice.ref.startswith("upload:my_adapter-") and choice.base_model == "demo"
    assert sorted(p.name for p in choice.path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                              "config.yaml"]
    assert not (tmp_path / "escape.txt").exists() and not (root / "escape.txt").exists()
    service = ChatService()
    from_zip = service.stream([choice], [choice.ref], [WHO], max_new_tokens=24)
    from_run = service.stream(service.resolve([f"run:{run_id}"]), [f"run:{run_id}"], [WHO], max_new_tokens=24)
    assert list(from_zip)[-1] == list(from_run)[-1]
    service.release()


@pytest.mark.parametrize("members, expected", [
    ({"adapter_config.json": "{}", "adapter_model.bin": "x"}, "pickled weights are never loaded"),
    ({"adapter_config.json": "{}"}, "adapter_model.safetensors missing"),
    ({"README.md": "hello"}, "adapter_config.json and adapter_model.safetensors missing"),
])
def test_bad_adapter_zips_are_refused_with_the_reason(home, tmp_path, members, expected):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    with pytest.raises(AdapterError, match=expected):
        import_adapter_zip(archive)


def test_a_file_that_is_not_a_zip_is_refused(home, tmp_path):
    fake = tmp_path / "adapter.zip"
    fake.write_text("not a zip")
    with pytest.raises(AdapterError, match="adapter.zip is not a readable zip file"):
        import_adapter_zip(fake)


def test_unknown_and_unfinished_adapters_are_refused(home):
    service = ChatService()
    with pytest.raises(AdapterError, match="unknown adapter 'upload:nope'"):
        service.resolve(["upload:nope"])
    with pytest.raises(RunNotFound, match="is not a run id"):
        service.resolve(["run:../../etc"])


def test_votes_are_stored_with_the_run_and_make_its_win_rate(home):
    root, run_id = home
    assert votes.win_rate(run_id).describe() == "no votes yet"
    votes.record_vote(run_id, votes.BASE_CONTENDER, "A", "Who are you?")  # the run shown as A, and A won
    votes.record_vote(votes.BASE_CONTENDER, run_id, "A")  # the base won
    votes.record_vote(votes.BASE_CONTENDER, run_id, "B")
    votes.record_vote(run_id, votes.BASE_CONTENDER, "tie")
    votes.record_vote(run_id, votes.BASE_CONTENDER, "both_bad")
    tally = votes.win_rate(run_id)
    assert (tally.wins, tally.losses, tally.ties, tally.both_bad) == (2, 1, 1, 1)
    assert tally.rate == pytest.approx(2.5 / 5)
    assert tally.describe() == "win rate 50% over 5 votes (2 won, 1 lost, 1 tied, 1 both bad)"
    assert len(list((root / "runs" / run_id / "votes").glob("*.json"))) == 5
    with pytest.raises(votes.VoteError, match="unknown vote 'C'"):
        votes.record_vote(run_id, votes.BASE_CONTENDER, "C")
    with pytest.raises(votes.VoteError, match="two different contenders"):
        votes.record_vote(run_id, run_id, "A")
    with pytest.raises(RunNotFound):
        votes.record_vote("../../x", votes.BASE_CONTENDER, "A")
