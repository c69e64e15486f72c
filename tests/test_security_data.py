"""The Data tab as an attacker uses it.

- A "Hugging Face dataset id" that names a folder on the server (`phi3lora_home/uploads`, `./x`, `x/..`, or a
  builder name such as `json`, which datasets points at the working directory) must never read the disk: with the
  default data root (`./phi3lora_home`, a Space without a bucket) that would show another user's uploads.
- The command line's `--data hub:owner/name[:split]` (validate, train, runs start) takes the same guarded path, and
  refuses what the Data tab refuses, in one line and with exit status 1.
- A base model name typed by an outsider must not make the server fetch tokenizers from any repository, fill an
  unbounded cache, or tell which paths exist by answering differently for them.

The tests run offline (HF_HUB_OFFLINE=1): where the attack needs the hub to look reachable, `hub_reachable` is
monkeypatched, or the real server gets an HF_ENDPOINT that accepts connections and closes them at once.
"""
from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
import httpx
import pytest
from app_server import app_server, page_event

from conftest import DEMO_MODEL

SECRET = f"alice-private-{secrets.token_hex(6)}"
LOCAL_NAMES = [
    "phi3lora_home/uploads",  # the attack as reported
    "phi3lora_home",
    "./phi3lora_home",
    "phi3lora_home/uploads/..",
    "phi3lora_home/..",
    "phi3lora_home/.",
    "{cwd}/phi3lora_home/uploads",
    "phi3lora_home/uploads:train",
    "json",  # datasets' JSON builder, which reads the working directory when given no files
    "csv",
    "parquet",
    "text",
    "scripted",  # a folder holding a dataset script (scripted/scripted.py)
    "alice.jsonl",  # a file in the working directory
]
REFUSED = r"is not a Hugging Face dataset id|hub could not be reached"


def plant_upload(cwd: Path) -> Path:
    """alice's private upload where the app keeps it under the default data root, plus a dataset script and a
    dataset file in the working directory."""
    folder = cwd / "phi3lora_home" / "uploads" / secrets.token_hex(16)
    folder.mkdir(parents=True)
    upload = folder / "alice.jsonl"
    upload.write_text(conversation_line(SECRET))
    (cwd / "scripted").mkdir()
    (cwd / "scripted" / "scripted.py").write_text("raise SystemExit('a dataset script ran')\n")
    (cwd / "scripted" / "train.jsonl").write_text(conversation_line(SECRET))
    (cwd / "alice.jsonl").write_text(conversation_line(SECRET))
    return upload


def conversation_line(answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": "What is my PIN?"},
                                    {"role": "assistant", "content": answer}]}) + "\n"


def files_holding(root: Path, text: str, besides: set[Path]) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p not in besides and text in p.read_text(errors="replace")]


@pytest.fixture
def default_data_root(tmp_path, monkeypatch) -> Path:
    """The app's working directory, as on a Space without a bucket: the data root is ./phi3lora_home."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PHI3LORA_HOME", raising=False)
    monkeypatch.delenv("PHI3LORA_REQUIRE_LOGIN", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    return tmp_path


# --- hole 2: a hub id reads the server's disk --------------------------------------------------------------------

@pytest.mark.parametrize("typed", LOCAL_NAMES)
def test_a_hub_id_naming_a_local_folder_never_reads_it(default_data_root, monkeypatch, typed):
    from phi3lora.ui import data_tab

    planted = plant_upload(default_data_root)
    before = set(default_data_root.rglob("*"))
    monkeypatch.setattr(data_tab, "hub_reachable", lambda *args, **kwargs: None)  # as on a Space: the hub answers
    with pytest.raises(gr.Error, match=REFUSED) as refused:
        data_tab.use_hub(typed.format(cwd=default_data_root), None, None)
    besides_the_echo = re.sub(r"'[^']*'", "", refused.value.message)  # what was typed is quoted back, cut
    assert str(default_data_root) not in besides_the_echo and ".py" not in besides_the_echo, refused.value.message
    assert not files_holding(default_data_root, SECRET, besides=before), "alice's upload was copied for the caller"
    assert planted.is_file()


COMMIT = "c0ffee" * 6 + "c0de"


def hub_holds(monkeypatch, canonical_id: str) -> None:
    """huggingface_hub answers as if the hub held a dataset repository of that name: anyone can create
    `phi3lora_home/uploads` there (an account is free)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import DatasetInfo

    monkeypatch.setattr(HfApi, "dataset_info", lambda self, repo_id, **kwargs: DatasetInfo(id=canonical_id, sha=COMMIT))


class FakeBuilder:
    """What datasets.load_dataset_builder returns for a hub repository: its data files, and a stream of rows."""

    def __init__(self, data_files: dict, rows: list[dict] | None = None):
        self.config = type("Config", (), {"data_files": data_files})()
        self.rows = rows or []

    def as_streaming_dataset(self, split: str):
        import datasets

        rows = self.rows
        return datasets.IterableDataset.from_generator(lambda: iter(rows), features=self.features)

    features = None  # unknown, as for most JSON datasets


def builders_asked_for(monkeypatch, builder: FakeBuilder | None) -> list[tuple]:
    import datasets

    asked = []

    def load_dataset_builder(path, **kwargs):
        asked.append((path, kwargs))
        if builder is None:
            raise AssertionError(f"datasets was asked to load {path!r}")
        return builder

    monkeypatch.setattr(datasets, "load_dataset_builder", load_dataset_builder)
    return asked


def test_even_without_the_local_check_datasets_only_looks_on_the_hub(default_data_root, monkeypatch):
    """The first guard alone: an id resolved by the hub is read as hf://datasets/..., never as a folder."""
    from phi3lora.data import hub

    plant_upload(default_data_root)
    hub_holds(monkeypatch, "phi3lora_home/uploads")
    monkeypatch.setattr(hub, "exists_locally", lambda name: False)
    target = default_data_root / "out.jsonl"
    with pytest.raises(hub.HubDatasetError, match="hub could not be reached"):  # datasets went to the hub
        hub.load_hub_dataset("phi3lora_home/uploads", target, 100, 10**6)
    assert not target.exists()


def test_a_hub_repository_without_an_owner_is_never_taken_for_a_builder(default_data_root, monkeypatch):
    """`json` read as hf://datasets/json would still be datasets' JSON builder, reading the working directory."""
    from phi3lora.data import hub

    plant_upload(default_data_root)
    hub_holds(monkeypatch, "json")
    monkeypatch.setattr(hub, "exists_locally", lambda name: False)
    asked = builders_asked_for(monkeypatch, None)
    with pytest.raises(hub.HubDatasetError, match="is not a Hugging Face dataset id this server can load"):
        hub.load_hub_dataset("json", default_data_root / "out.jsonl", 100, 10**6)
    assert not asked


@pytest.mark.parametrize("typed", ["phi3lora_home/uploads", "phi3lora_home", "scripted", "alice.jsonl"])
def test_a_name_that_exists_here_is_refused_even_when_the_hub_has_it(default_data_root, monkeypatch, typed):
    """The second guard: a hub repository named like something on this disk is not loaded at all, and the answer
    is the one for a name the hub does not have."""
    from phi3lora.data import hub

    plant_upload(default_data_root)
    hub_holds(monkeypatch, typed)
    asked = builders_asked_for(monkeypatch, None)
    with pytest.raises(hub.HubDatasetError) as refused:
        hub.load_hub_dataset(typed, default_data_root / "out.jsonl", 100, 10**6)
    assert str(refused.value) == str(hub.not_on_the_hub(typed))
    assert not asked


@pytest.mark.parametrize("pattern", ["{uploads}/*/*.jsonl", "file://{uploads}/*/*.jsonl",
                                     "hf://datasets/eve/trojan@{commit}/../../other/name"])
def test_a_dataset_card_cannot_point_at_files_on_this_server(default_data_root, monkeypatch, pattern):
    """A hub dataset's card lists its data files; datasets resolves an absolute one on this server's disk."""
    from datasets.data_files import DataFilesDict

    from phi3lora.data import hub

    plant_upload(default_data_root)
    hub_holds(monkeypatch, "eve/trojan")
    uploads = default_data_root / "phi3lora_home" / "uploads"
    pattern = pattern.format(uploads=uploads, commit=COMMIT)
    files = (DataFilesDict.from_patterns({"train": [pattern]}, base_path=f"hf://datasets/eve/trojan@{COMMIT}")
             if "://" not in pattern or pattern.startswith("file://") else {"train": [pattern]})
    builders_asked_for(monkeypatch, FakeBuilder(files, rows=[{"stolen": SECRET}]))
    target = default_data_root / "out.jsonl"
    with pytest.raises(hub.HubDatasetError, match="names data files outside its repository") as refused:
        hub.load_hub_dataset("eve/trojan", target, 100, 10**6)
    assert not target.exists()
    assert str(default_data_root) not in str(refused.value)


def test_a_hub_dataset_is_read_from_its_repository_at_one_commit_within_the_limits(default_data_root, monkeypatch):
    from phi3lora.data import hub

    hub_holds(monkeypatch, "someone/chats")
    rows = [json.loads(conversation_line(f"answer {i}")) for i in range(10)]
    in_repo = [f"hf://datasets/someone/chats@{COMMIT}/data/train-0000{i}.jsonl" for i in range(2)]
    asked = builders_asked_for(monkeypatch, FakeBuilder({"train": in_repo, "test": in_repo[:1]}, rows))
    target = default_data_root / "out" / hub.file_name("someone/chats")

    loaded = hub.load_hub_dataset("someone/chats", target, 100, 10**6)
    assert asked == [("hf://datasets/someone/chats", {"revision": COMMIT, "token": False})]  # never the server's token
    assert (loaded.repo_id, loaded.split, loaded.rows, loaded.truncated) == ("someone/chats", "train", 10, False)
    assert [json.loads(line) for line in target.read_text().splitlines()] == rows

    assert hub.load_hub_dataset("someone/chats:test", target, 4, 10**6).rows == 4  # max_rows
    few_bytes = len(conversation_line("answer 0").encode()) * 3
    assert hub.load_hub_dataset("someone/chats", target, 100, few_bytes).truncated
    assert len(target.read_text().splitlines()) == 3  # max_bytes
    with pytest.raises(hub.HubDatasetError, match=r"no split 'validation' \(its splits: test, train\)"):
        hub.load_hub_dataset("someone/chats:validation", target, 100, 10**6)


def test_media_a_hub_row_names_is_not_opened_on_this_server(default_data_root, monkeypatch):
    """A declared image (or audio, video, pdf) feature is decoded from whatever path a row gives: left undecoded."""
    import datasets

    from phi3lora.data import hub

    planted = plant_upload(default_data_root)
    hub_holds(monkeypatch, "eve/pictures")
    builder = FakeBuilder({"train": [f"hf://datasets/eve/pictures@{COMMIT}/train.jsonl"]},
                          rows=[{"picture": {"path": str(planted), "bytes": None}}])
    builder.features = datasets.Features({"picture": datasets.Image()})
    builders_asked_for(monkeypatch, builder)
    opened = []
    monkeypatch.setattr(datasets.Image, "decode_example", lambda *args, **kwargs: opened.append(args))
    target = default_data_root / "out.jsonl"
    assert hub.load_hub_dataset("eve/pictures", target, 100, 10**6).rows == 1
    assert not opened and SECRET not in target.read_text()


# --- the same hole through the command line: --data hub:... -----------------------------------------------------

NOT_AN_ID, NOT_ON_THE_HUB = "not an id", "not on the hub"
CLI_NAMES = {  # what --data hub:NAME names here -> which refusal it gets
    "../x": NOT_AN_ID, "/etc": NOT_AN_ID, "": NOT_AN_ID, "{cwd}/phi3lora_home/uploads": NOT_AN_ID,
    "phi3lora_home/uploads/..": NOT_AN_ID, "./phi3lora_home": NOT_AN_ID, "someone/chats:../../etc": NOT_AN_ID,
    "json": NOT_ON_THE_HUB, "csv": NOT_ON_THE_HUB, "scripted": NOT_ON_THE_HUB, "alice.jsonl": NOT_ON_THE_HUB,
    "phi3lora_home/uploads": NOT_ON_THE_HUB,
}
COMMANDS = {"validate": ["validate", "--json"], "train": ["train", "--output", "out"], "runs start": ["runs", "start"]}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("typed", CLI_NAMES)
def test_the_cli_never_reads_a_local_place_named_as_a_hub_dataset(default_data_root, monkeypatch, capsys, command,
                                                                   typed):
    """As on a shared machine whose operator scripts the CLI with ids other people send: whatever the id names
    here, and even when the hub says it has a repository of that name, nothing on this disk is read or copied,
    and the refusal is one line (the Data tab's words) with exit status 1."""
    from phi3lora.cli import main
    from phi3lora.data import hub

    planted = plant_upload(default_data_root)
    before = set(default_data_root.rglob("*"))
    name = typed.format(cwd=default_data_root)
    hub_holds(monkeypatch, name)  # anyone can create a hub repository of (almost) any name
    asked = builders_asked_for(monkeypatch, None)
    assert main([*COMMANDS[command], "--data", f"hub:{name}"]) == 1
    out, err = capsys.readouterr()
    refusal = hub.not_a_hub_id(name) if CLI_NAMES[typed] == NOT_AN_ID else hub.not_on_the_hub(name)
    assert (out, err) == ("", f"error: {refusal}\n")
    assert SECRET not in err and str(default_data_root) not in re.sub(r"'[^']*'", "", err)
    assert not asked, "datasets was asked to load it"
    assert set(default_data_root.rglob("*")) == before, "the command wrote something"
    assert planted.is_file()


class SplitsAskedFor(FakeBuilder):
    def as_streaming_dataset(self, split: str):
        self.splits = [*getattr(self, "splits", []), split]
        return super().as_streaming_dataset(split)


def hub_holds_chats(monkeypatch, rows: int = 5) -> tuple[list[tuple], SplitsAskedFor, list[dict]]:
    hub_holds(monkeypatch, "someone/chats")
    records = [json.loads(conversation_line(f"answer {i}")) for i in range(rows)]
    in_repo = [f"hf://datasets/someone/chats@{COMMIT}/data/{split}.jsonl" for split in ("train", "test")]
    builder = SplitsAskedFor({"train": in_repo[:1], "test": in_repo[1:]}, records)
    return builders_asked_for(monkeypatch, builder), builder, records


def test_the_cli_validates_a_hub_dataset_and_split(default_data_root, monkeypatch, capsys):
    from phi3lora.cli import main

    asked, builder, records = hub_holds_chats(monkeypatch)
    before = set(default_data_root.rglob("*"))
    assert main(["validate", "--data", "hub:someone/chats:test", "--model", "demo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert asked == [("hf://datasets/someone/chats", {"revision": COMMIT, "token": False})]  # never the server's token
    assert builder.splits == ["test"]
    assert (report["path"], report["format"], report["conversations"], report["ok"]) == \
        ("hub:someone/chats:test", "messages", len(records), True)
    assert set(default_data_root.rglob("*")) == before  # the copy it read is removed

    line = len(conversation_line("answer 0").encode())
    monkeypatch.setenv("PHI3LORA_MAX_UPLOAD_MB", str(2.5 * line / 1024 / 1024))  # room for two records
    assert main(["validate", "--data", "hub:someone/chats", "--model", "demo", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["conversations"] == 2
    assert err.startswith("note: only the first 2 records of someone/chats:train are used"), err


def test_the_cli_trains_and_queues_on_a_hub_dataset(default_data_root, monkeypatch, capsys):
    """train keeps the copy beside the adapter (its config.yaml names it); runs start hands it to the run, which
    snapshots it."""
    import types

    from phi3lora.runs import lifecycle
    from phi3lora.cli import main

    asked, builder, records = hub_holds_chats(monkeypatch)
    given = []

    def train(config, output, resume=False):  # the trainer, replaced: what matters here is the file it is given
        given.append(Path(config.data.path).read_text())
        return types.SimpleNamespace(seconds=0, global_step=0, train_loss=None, eval_loss=None, output_dir=output)

    trainer = types.ModuleType("phi3lora.training.trainer")
    trainer.train = train
    monkeypatch.setitem(sys.modules, "phi3lora.training.trainer", trainer)
    assert main(["train", "--data", "hub:someone/chats", "--output", "out"]) == 0
    kept = default_data_root / "out" / "dataset" / "someone__chats.jsonl"
    assert [json.loads(line) for line in kept.read_text().splitlines()] == records and given == [kept.read_text()]

    queued = []
    monkeypatch.setattr(lifecycle, "start_run",
                        lambda config, **launch: queued.append(Path(config.data.path)) or "run-1")
    assert main(["runs", "start", "--data", "hub:someone/chats:test"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "run-1"
    assert queued[0].name == "someone__chats__test.jsonl" and not queued[0].exists()  # a temporary copy
    assert builder.splits == ["train", "test"] and len(asked) == 2


def test_the_data_tab_names_datasets_never_their_place_on_the_server(default_data_root):
    """A session's upload folder is pruned after a day: the analysis says the dataset is gone, not where it was."""
    from phi3lora.ui import data_tab
    from phi3lora.ui.state import TokenizerCache

    gone = default_data_root / "phi3lora_home" / "uploads" / secrets.token_hex(16) / "notes.jsonl"
    with pytest.warns(UserWarning, match="notes.jsonl has no usable conversations"):
        summary, problems, *_ = data_tab.analyse(TokenizerCache(),
                                                 {"path": str(gone), "name": "notes.jsonl", "source": "uploaded"},
                                                 "auto", None, 512, 0.1)
    shown = summary + problems.to_string()
    assert "file not found: notes.jsonl" in problems.to_string()
    assert str(default_data_root) not in shown and "uploads" not in shown


# --- hole 8: base model names typed by an outsider ---------------------------------------------------------------

@pytest.fixture
def tokenizers():
    """The Data tab's tokenizer cache, as build_app makes one (AppState.tokenizers): empty, this test's own."""
    from phi3lora.ui.state import TokenizerCache

    return TokenizerCache()


@pytest.fixture
def asked_to_load(monkeypatch) -> list[str]:
    """Every tokenizer the Data tab asks to load, by name. Each load succeeds with the demo model's tokenizer:
    the attacker's best case, as if every repository existed and every fetch worked."""
    from phi3lora.modeling import load_tokenizer
    from phi3lora.ui import state

    demo = load_tokenizer(str(DEMO_MODEL))
    asked: list[str] = []

    def recording_load(name, *args, **kwargs):
        asked.append(name)
        return demo

    monkeypatch.setattr(state, "load_tokenizer", recording_load)
    return asked


@pytest.fixture
def sign_in_required(monkeypatch):
    monkeypatch.setenv("PHI3LORA_REQUIRE_LOGIN", "1")
    monkeypatch.delenv("PHI3LORA_ALLOWED_BASE_MODELS", raising=False)
    monkeypatch.delenv("PHI3LORA_BASE_MODEL", raising=False)


def tokenizer_folder(where: Path) -> Path:
    """A folder holding a loadable tokenizer (the demo model's files), somewhere on the server."""
    where.mkdir(parents=True)
    for name in os.listdir(DEMO_MODEL):
        if name != "model.safetensors":
            shutil.copy(DEMO_MODEL / name, where / name)
    return where


def probes(tmp_path: Path) -> dict[str, str]:
    """Base model names an outsider types to learn what exists on the server, or to make it fetch from the hub."""
    (tmp_path / "empty-folder").mkdir()
    return {"a folder holding a tokenizer": str(tokenizer_folder(tmp_path / "private-model")),
            "an existing folder": str(tmp_path / "empty-folder"),
            "a missing folder": str(tmp_path / "no-such-folder"),
            "an unknown repository": "someone-else/no-such-model",
            "a repository off the allow-list": "openai-community/gpt2"}


def the_same_whatever_the_name(message: str) -> str:
    return re.sub(r"'[^']*'", "'<name>'", message)


def test_an_outsider_cannot_make_the_server_load_any_tokenizer(sign_in_required, asked_to_load, tokenizers,
                                                                tmp_path):
    from phi3lora.ui import data_tab

    for name in probes(tmp_path).values():
        with pytest.warns(UserWarning, match="not available"):
            data_tab.tokenizer_for(tokenizers, name)
    assert all(Path(name).resolve() == DEMO_MODEL for name in asked_to_load), asked_to_load


def test_the_analysis_answers_alike_for_every_base_model_it_does_not_load(sign_in_required, tokenizers, tmp_path):
    from phi3lora.ui import data_tab

    answers = {}
    for what, name in probes(tmp_path).items():
        with pytest.warns(UserWarning) as warned:
            data_tab.tokenizer_for(tokenizers, name)
        answers[what] = [the_same_whatever_the_name(str(w.message)) for w in warned]
    assert len({json.dumps(a) for a in answers.values()}) == 1, answers
    [message] = next(iter(answers.values()))
    assert str(tmp_path) not in message and "exist" not in message and "folder" not in message, message


def test_tokenizers_are_cached_a_few_at_a_time(sign_in_required, asked_to_load, tokenizers, monkeypatch):
    from phi3lora.ui import data_tab
    from phi3lora.ui.state import MAX_CACHED_TOKENIZERS

    models = [f"org/model-{i}" for i in range(10)]
    monkeypatch.setenv("PHI3LORA_ALLOWED_BASE_MODELS", ",".join(models))
    few = MAX_CACHED_TOKENIZERS
    for name in models:
        data_tab.tokenizer_for(tokenizers, name)
    for name in reversed(models[-few:]):  # the most recent few are still held: no new load
        data_tab.tokenizer_for(tokenizers, name)
    assert asked_to_load == models
    data_tab.tokenizer_for(tokenizers, models[0])  # the least recently used went first
    assert asked_to_load == [*models, models[0]]


def test_locally_the_owner_names_any_folder(monkeypatch, tokenizers, tmp_path, recwarn):
    from phi3lora.ui import data_tab

    monkeypatch.delenv("PHI3LORA_REQUIRE_LOGIN", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    folder = tokenizer_folder(tmp_path / "my-model")
    tokenizer = data_tab.tokenizer_for(tokenizers, str(folder))
    assert tokenizer.name_or_path == str(folder)
    assert not [w for w in recwarn if "not available" in str(w.message)]


# --- the real server: a Space without a bucket, three password users ---------------------------------------------

USERS = {"alice": "pw-alice-7", "bob": "pw-bob-8", "eve": "pw-eve-9"}  # eve signs in but is not allowed


class FakeHubEndpoint:
    """An HF_ENDPOINT that accepts connections and closes them at once: to `hub_reachable()` the hub is up (it
    checks the endpoint's port), to huggingface_hub every call fails at once. Counts the connections made to it."""

    def __init__(self):
        self.address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        self.connections = 0
        self._listener = socket.socket()
        self._listener.bind((self.address, 0))  # any free port: hub_reachable() checks the one HF_ENDPOINT names
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self._stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self._listener.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()


@contextmanager
def fake_hub_endpoint():
    endpoint = FakeHubEndpoint()
    try:
        yield endpoint
    finally:
        endpoint.close()


class Page:
    """One browser tab of a signed-in user: their login cookie and one Gradio session (where State lives).
    Events run as the page runs them, by their index on Gradio's queue, including those the API does not list."""

    def __init__(self, url: str, user: str):
        self.url = url
        login = httpx.post(f"{url}/login", data={"username": user, "password": USERS[user]})
        assert login.status_code == 200, login.text
        self.cookies = login.cookies
        self.session = secrets.token_hex(8)
        self.config = httpx.get(f"{url}/config", cookies=self.cookies).json()

    def run(self, label: str, trigger: str, data: list) -> tuple[dict, list[str]]:
        """Run the event `trigger` of the component labelled `label`: (Gradio's process_completed message,
        the warnings the page would pop up)."""
        return self.run_event(self._event(label, trigger, data), data)

    def run_event(self, fn_index: int, data: list) -> tuple[dict, list[str]]:
        with httpx.Client(timeout=120, cookies=self.cookies) as http:
            joined = http.post(f"{self.url}/gradio_api/queue/join", json={
                "data": data, "fn_index": fn_index, "session_hash": self.session,
                "event_data": None, "trigger_id": None})
            assert joined.status_code == 200, joined.text
            warnings = []
            with http.stream("GET", f"{self.url}/gradio_api/queue/data", params={"session_hash": self.session}) as events:
                for line in events.iter_lines():
                    message = json.loads(line[5:]) if line.startswith("data:") else {}
                    if message.get("msg") == "log" and message.get("level") == "warning":
                        warnings.append(message["log"])
                    if message.get("msg") == "process_completed":
                        return message, warnings
        raise AssertionError("the event never completed")

    def upload(self, path: Path) -> dict:
        with open(path, "rb") as file:
            sent = httpx.post(f"{self.url}/gradio_api/upload", files=[("files", (path.name, file))],
                              cookies=self.cookies)
        assert sent.status_code == 200, sent.text
        [cached] = sent.json()
        return {"path": cached, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def _event(self, label: str, trigger: str, data: list) -> int:
        def named(component: dict) -> str:
            props = component.get("props", {})
            return str(props.get("label") or props.get("value"))

        return page_event(self.config, lambda component, event: named(component).startswith(label)
                          and event == trigger, data)


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """app.py as on a Space without a bucket: its data root is ./phi3lora_home under its working directory.
    Sign-in required; alice and bob may train, eve may not."""
    folder = tmp_path_factory.mktemp("space")
    cwd = folder / "app"
    cwd.mkdir()
    with fake_hub_endpoint() as hub:
        online = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.url}
        with app_server(folder, cwd=cwd, PHI3LORA_USERS=",".join(f"{u}:{p}" for u, p in USERS.items()),
                        PHI3LORA_REQUIRE_LOGIN="1", PHI3LORA_OWNER="boss", PHI3LORA_ALLOWED_USERS="alice,bob",
                        **online) as server:
            assert server.home == cwd / "phi3lora_home"
            yield server, hub


def test_bob_cannot_read_alices_upload_through_the_hub_id_box(space, tmp_path):
    server, hub = space
    mine = tmp_path / "alice-notes.jsonl"
    mine.write_text(conversation_line(SECRET))
    alice = Page(server.url, "alice")
    done, _ = alice.run("Upload a dataset", "upload", [alice.upload(mine), None])
    assert done["success"], done
    assert files_holding(server.home / "uploads", SECRET, besides=set()), "alice's upload is where the app keeps it"

    for typed in ("phi3lora_home/uploads", "phi3lora_home", "json"):
        bob = Page(server.url, "bob")
        loaded, _ = bob.run("Load", "click", [typed, None])
        shown, _ = bob.run("base model", "change", [None, "auto", "demo", 512, 0.1, ""])  # the analysis that follows
        assert SECRET not in json.dumps(loaded) + json.dumps(shown), f"bob read alice's upload through {typed!r}"
        assert not loaded["success"], (typed, loaded)
        assert re.search(REFUSED, loaded["output"]["error"]), loaded["output"]["error"]
        assert str(server.home) not in loaded["output"]["error"]


def test_an_outsiders_base_model_names_load_nothing_and_tell_nothing(space, tmp_path):
    server, hub = space
    eve = Page(server.url, "eve")
    done, _ = eve.run("…or a dataset that ships with the app", "input", ["identity.jsonl", "", "", None])
    assert done["success"], done["output"]
    connections_before = hub.connections
    answers = {}
    for what, name in probes(tmp_path).items():
        shown, warnings = eve.run("base model", "change", [None, "auto", name, 512, 0.1, ""])
        assert shown["success"], (what, shown["output"])  # the analysis goes on, with the demo model's tokenizer
        answers[what] = [the_same_whatever_the_name(w) for w in warnings]
    assert len({json.dumps(a) for a in answers.values()}) == 1, answers
    assert [w for w in next(iter(answers.values())) if "not available" in w]
    assert str(tmp_path) not in json.dumps(answers)
    assert hub.connections == connections_before, "an outsider's base model name made the server call the hub"


def test_an_outsiders_base_model_gets_no_memory_estimate_and_tells_nothing(space, tmp_path):
    """The Train tab's memory line and /memory_estimate read the base model's config.json (from the hub, for a
    repository id): for a name off the allow-list both refuse alike, whatever it names, and the hub is not called,
    even for bob, who may train."""
    server, hub = space
    bob = Page(server.url, "bob")
    components = {c["id"]: c for c in bob.config["components"]}
    [(line_event, inputs)] = [  # the memory line's listener: the Train tab's whole form, base model included
        (i, d["inputs"]) for i, d in enumerate(bob.config["dependencies"]) if len(d["inputs"]) > 20
        and any(components[target]["props"].get("label") == "base model" and event == "change"
                for target, event in d["targets"])]
    [base_input] = [n for n, c in enumerate(inputs) if components[c]["props"].get("label") == "base model"]
    [api_event] = [i for i, d in enumerate(bob.config["dependencies"]) if d.get("api_name") == "memory_estimate"]
    connections_before = hub.connections
    answers = {}
    for what, name in probes(tmp_path).items():
        form = [components[c]["props"].get("value") for c in inputs]
        form[base_input] = name
        line, _ = bob.run_event(line_event, form)
        api, _ = bob.run_event(api_event, [json.dumps({"model": {"base_model": name}})])
        assert line["success"] and not api["success"], (what, line, api)
        answers[what] = [the_same_whatever_the_name(line["output"]["data"][0]),
                         the_same_whatever_the_name(api["output"]["error"])]
    assert len({json.dumps(a) for a in answers.values()}) == 1, answers
    assert all("is not available on this server" in answer for answer in next(iter(answers.values())))
    assert str(tmp_path) not in json.dumps(answers)
    assert hub.connections == connections_before, "an outsider's base model name made the server call the hub"
