"""`python -m phi3lora push` and the Runs tab's Push: an adapter, or the merged model, goes to a Hub model repository
with a model card, through huggingface_hub's real client with only its HTTP transport faked (test_space.FakeHub,
the fake Hub the Space push is tested against)."""
from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import gradio as gr
import httpx2
import huggingface_hub
import pytest
import yaml
from conftest import run_cli
from huggingface_hub import ModelCard, constants
from huggingface_hub.utils._http import default_client_factory
from test_space import FakeHub, commit_entries

from phi3lora.cli.commands import main
from phi3lora.deploy import model_card
from phi3lora.deploy.export import export_status
from phi3lora.deploy.hub_push import HubPushOptions, PushError, adapter_upload, push_run
from phi3lora.inference import votes
from phi3lora.ui import runs_push

PUSH_TOKEN = "hf_" + "Q" * 34
ADAPTER_UPLOAD = ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                  "config.yaml", "tokenizer.json", "tokenizer_config.json"]


class ModelHub(FakeHub):
    """The Space push's fake Hub, plus what a model push asks besides: a repository's settings (visibility)."""

    def answer(self, request):
        if request.url.path.endswith("/settings"):
            request.read()
            self.requests.append(request)
            return httpx2.Response(200, json={})
        return super().answer(request)


@pytest.fixture
def hub(monkeypatch):
    fake = ModelHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests set HF_HUB_OFFLINE=1 for everything else
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the LFS protocol: its uploads are seen here
    monkeypatch.setenv("HF_TOKEN", PUSH_TOKEN)
    huggingface_hub.set_client_factory(fake.client)
    yield fake
    huggingface_hub.set_client_factory(default_client_factory)


def uploaded(hub: FakeHub, repo: str) -> tuple[dict[str, bytes], list[str]]:
    """({path: bytes} of the one commit to `repo`, [paths it deleted])."""
    [commit] = hub.to(f"/api/models/{repo}/commit/main")
    entries = commit_entries(commit)
    files = {}
    for entry in entries:
        if entry["key"] == "file":
            files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
        elif entry["key"] == "lfsFile":
            content = hub.lfs_uploads[entry["value"]["oid"]]
            assert hashlib.sha256(content).hexdigest() == entry["value"]["oid"]
            files[entry["value"]["path"]] = content
    return files, [e["value"]["path"] for e in entries if e["key"] == "deletedFile"]


def front_matter_and_body(card: bytes) -> tuple[dict, str]:
    text = card.decode("utf-8")
    assert text.startswith("---\n")
    _, front, body = text.split("---\n", 2)
    assert ModelCard(text).data.to_dict() == yaml.safe_load(front)  # huggingface_hub reads the same metadata
    return yaml.safe_load(front), body


def assert_token_only_in_the_authorization_header(hub: FakeHub, *outputs: str) -> None:
    assert hub.requests
    for request in hub.requests:
        assert PUSH_TOKEN not in str(request.url) and PUSH_TOKEN.encode() not in request.content
        for name, value in request.headers.items():
            if name.lower() == "authorization" and request.url.host == "huggingface.co":
                assert value == f"Bearer {PUSH_TOKEN}"
            else:
                assert PUSH_TOKEN not in value, f"token in the {name} header of {request.url}"
    assert all(PUSH_TOKEN not in text for text in outputs)


def test_adapter_push_uploads_the_allow_list_and_a_card_without_the_data(hub, finished_copy):
    home, run_id = finished_copy
    run = home / "runs" / run_id
    votes.record_vote(run_id, votes.BASE_CONTENDER, "A")
    votes.record_vote(run_id, votes.BASE_CONTENDER, "tie")
    messages = []
    url = push_run(run_id, HubPushOptions(repo="alice/wren-adapter"), log=messages.append)
    assert url == "https://huggingface.co/alice/wren-adapter"

    [create] = hub.to("/api/repos/create")
    assert json.loads(create.content) == {"name": "wren-adapter", "organization": "alice", "type": "model",
                                          "visibility": "private"}
    [settings] = hub.to("/api/models/alice/wren-adapter/settings", "PUT")
    assert json.loads(settings.content) == {"visibility": "private"}  # an existing public repository too

    files, deleted = uploaded(hub, "alice/wren-adapter")
    assert sorted(files) == ADAPTER_UPLOAD, "no checkpoints, optimizer states, training_args.bin, metrics or dataset"
    assert deleted == ["old_module.py"], "the repository holds this push's files only; .gitattributes stays"
    for name in ("adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert files[name] == (run / name).read_bytes(), name
    ours, theirs = json.loads(files["adapter_config.json"]), json.loads((run / "adapter_config.json").read_text())
    assert ours.pop("base_model_name_or_path") == "phi3lora demo_model"  # never this server's path
    theirs.pop("base_model_name_or_path")
    assert ours == theirs
    assert yaml.safe_load(files["config.yaml"])["data"]["path"] == "identity-wrenfield.jsonl"

    front, body = front_matter_and_body(files["README.md"])
    assert front == {"library_name": "peft", "pipeline_tag": "text-generation",
                     "tags": ["phi3lora", "phi3", "lora", "peft"]}  # the demo base is on no Hub: no base_model
    summary = json.loads((run / "summary.json").read_text())
    for expected in ("identity-wrenfield.jsonl (messages, ", f"{summary['train_conversations']} for training, "
                     f"{summary['eval_conversations']} held out", f"final train loss: {summary['train_loss']:.4f}",
                     f"final eval loss (held-out split): {summary['eval_loss']:.4f}", "steps: 3 of 3",
                     "win rate 75% over 2 votes", "PeftModel.from_pretrained(base, \"alice/wren-adapter\")",
                     "learning_rate:", "not part of this repository", f"run {run_id}"):
        assert expected in body, expected
    dataset = (run / "dataset" / "identity-wrenfield.jsonl").read_text()
    answers = [m["content"] for line in dataset.splitlines() for m in json.loads(line)["messages"]
               if m["role"] == "assistant"]
    for name, content in files.items():
        assert str(home).encode() not in content and b"/tmp/" not in content, f"a server path in {name}"
        assert not any(answer.encode() in content for answer in answers), f"dataset content in {name}"
    assert_token_only_in_the_authorization_header(hub, *messages)
    assert "uploading 7 files" in messages[0] and "adapter_model.safetensors" in messages[0]


def test_merged_push_merges_once_and_uploads_the_export(hub, finished_copy):
    """From a run, --merged makes the export (deploy/export.py, a real task) and pushes its files; a second push
    reuses that export instead of merging again."""
    _, run_id = finished_copy
    messages = []
    push_run(run_id, HubPushOptions(repo="alice/wren-merged", public=True, merged=True), log=messages.append)
    [export] = export_status(run_id)
    model = export["path"]
    assert export["status"] == "completed"

    [create] = hub.to("/api/repos/create")
    assert json.loads(create.content)["visibility"] == "public"
    files, _ = uploaded(hub, "alice/wren-merged")
    on_disk = {p.name: p.read_bytes() for p in Path(model).iterdir() if p.name != "README.md"}
    assert set(files) == {*on_disk, "README.md", "config.yaml"}
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt")) for name in files)
    assert all(files[name] == content for name, content in on_disk.items())
    front, body = front_matter_and_body(files["README.md"])
    assert front["library_name"] == "transformers" and "merged" in front["tags"]
    assert 'AutoModelForCausalLM.from_pretrained("alice/wren-merged")' in body
    assert_token_only_in_the_authorization_header(hub, *messages)

    hub.requests.clear()
    push_run(run_id, HubPushOptions(repo="alice/wren-merged", merged=True), log=messages.append)
    assert len(export_status(run_id)) == 1 and "using the merged model of export 1" in messages
    assert uploaded(hub, "alice/wren-merged")[0]["model.safetensors"] == files["model.safetensors"]


def test_cli_pushes_an_adapter_folder_and_names_the_hubs_refusal(hub, finished_copy, capsys):
    """`push --adapter DIR` (train's --output layout: a run folder is one), in this process so the fake Hub answers."""
    home, run_id = finished_copy
    folder = home / "runs" / run_id
    assert main(["push", "--adapter", str(folder), "--repo", "alice/wren", "--public", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"url": "https://huggingface.co/alice/wren"}
    [settings] = hub.to("/api/models/alice/wren/settings", "PUT")
    assert json.loads(settings.content) == {"visibility": "public"}
    files, _ = uploaded(hub, "alice/wren")
    assert sorted(files) == ADAPTER_UPLOAD and b"(run " not in files["README.md"]  # no run id: a plain folder

    hub.requests.clear()
    hub.fail = {"/api/repos/create": 403}
    assert main(["push", "--adapter", str(folder), "--repo", "bob/wren"]) == 1
    error = capsys.readouterr().err
    assert re.fullmatch(r"error: the token is not allowed to do this while creating the repository bob/wren "
                        r"\(403\): it needs write access to that namespace \(the Hub says: .*\)\n", error), error
    assert PUSH_TOKEN not in error and hub.to("/commit/main") == []


def test_push_without_a_token_says_so_in_one_line(tmp_path):
    done = run_cli("push", "--run", "20261130-000000-abcdef", "--repo", "alice/x", timeout=60,
                   env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN_PATH": str(tmp_path / "token"),
                        "PHI3LORA_HOME": str(tmp_path / "home")})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: no Hugging Face token: set $HF_TOKEN to a write token (https://huggingface.co/settings/tokens) "
        "or run `hf auth login`"]


@pytest.mark.parametrize("repo", [
    "wren", "alice/", "/wren", "alice/wren/extra", "../wren", "alice/../wren", "alice/..", "./wren", "alice/wr en",
    "alice/wren\n", "alice/wrén", "alice/wren\u202e", "аlice/wren",  # Cyrillic а
    "alice/" + "w" * 97, "x" * 5000, "alice/wren--x", "alice/-wren", "alice/wren.", "alice/wren.git", "",
])
def test_bad_repository_ids_are_refused_before_the_hub_is_called(hub, repo):
    with pytest.raises(PushError, match="is not a Hub repository id: expected OWNER/NAME") as error:
        push_run("20261130-000000-abcdef", HubPushOptions(repo=repo), log=lambda line: None)
    assert len(str(error.value)) < 300 and "\n" not in str(error.value)
    assert hub.requests == []


EVIL = "evil\n---\nlicense: apache-2.0\n---\n<script>alert(1)</script>[x](javascript:alert(1))```\u202e.jsonl"


def test_user_values_cannot_break_the_card(finished_copy):
    """A dataset name and a base model name written to break out of the front matter, the text or the code fence."""
    home, run_id = finished_copy
    run = home / "runs" / run_id
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "dataset": EVIL}) + "\n")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["base_model"] = "alice/x\n---\ntags: [pwned]"
    config["data"]["columns"] = {"messages": "```\n# injected"}
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    card = model_card.render(model_card.gather(run, run_id), "alice/wren", merged=False).encode()
    front, body = front_matter_and_body(card)
    assert front == {"library_name": "peft", "pipeline_tag": "text-generation",
                     "tags": ["phi3lora", "phi3", "lora", "peft"]}, "no user value reaches the front matter"
    fence = re.search(r"^(`{3,})yaml$", body, re.M).group(1)
    text, config_block, rest = re.split(rf"^{fence}(?:yaml)?$", body, flags=re.M)
    assert len(fence) > 3 and "`" * len(fence) not in config_block, "the config's ``` cannot close its fence"
    assert yaml.safe_load(config_block)["data"]["path"] == EVIL  # as text in a code block, which shows no markup
    for markdown in (text, rest):
        assert "<script" not in markdown and "](javascript:" not in markdown and "\u202e" not in markdown
        assert not re.search(r"^(---|# injected|tags: \[pwned\])", markdown, re.M), "a user value starts a line"
    dataset_line = next(line for line in text.splitlines() if line.startswith("- dataset: "))
    assert "&lt;script&gt;" in dataset_line and "U+000A" in dataset_line and "U+202E" in dataset_line


@pytest.fixture
def space(finished_copy, monkeypatch):
    """The few-step run, started by alice, on a Space owned by boss where alice may train."""
    home, run_id = finished_copy
    for name, value in {"PHI3LORA_REQUIRE_LOGIN": "1", "PHI3LORA_OWNER": "boss",
                        "PHI3LORA_ALLOWED_USERS": "boss,alice"}.items():
        monkeypatch.setenv(name, value)
    meta = home / "runs" / run_id / "run.json"
    meta.write_text(meta.read_text().replace('"owner": null', '"owner": "user:alice"'))
    return run_id


def test_on_a_space_only_the_owner_pushes(hub, space):
    run_id = space
    with pytest.raises(gr.Error, match="Only the owner of this Space pushes to the Hugging Face Hub"):
        runs_push.push(run_id, "alice/wren", False, False, request=gr.Request(username="alice", session_hash="s"))
    with pytest.raises(gr.Error, match=f"no run {run_id}"):  # an anonymous visitor: as if it did not exist
        runs_push.push(run_id, "alice/wren", False, False, request=gr.Request(username=None, session_hash="s"))
    assert hub.requests == []
    with pytest.raises(gr.Error, match="no merged export of its current adapter: export the merged model first"):
        runs_push.push(run_id, "boss/wren", False, True, request=gr.Request(username="boss", session_hash="s"))
    shown = runs_push.push(run_id, "boss/wren", False, False, request=gr.Request(username="boss", session_hash="s"))
    assert shown.startswith(f"Pushed the adapter of run {run_id} to [boss/wren](https://huggingface.co/boss/wren)")
    assert "adapter_model.safetensors" in shown and PUSH_TOKEN not in shown
    assert sorted(uploaded(hub, "boss/wren")[0]) == ADAPTER_UPLOAD


def test_card_names_a_hub_base_with_its_revision_and_license(finished_copy, tmp_path, monkeypatch):
    """A base from the Hub: its id in the front matter and adapter_config.json, the commit this machine's hub cache
    holds, and the license its own card states (a license value that is no license id is left out)."""
    home, run_id = finished_copy
    run = home / "runs" / run_id
    base, commit = "microsoft/Phi-3-mini-4k-instruct", "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub-cache" / "models--microsoft--Phi-3-mini-4k-instruct"
    (cache / "refs").mkdir(parents=True)
    (cache / "refs" / "main").write_text(commit)
    (cache / "snapshots" / commit).mkdir(parents=True)
    (cache / "snapshots" / commit / "config.json").write_text("{}")
    readme = cache / "snapshots" / commit / "README.md"
    readme.write_text("---\nlicense: mit\nlicense_link: https://example.com\n---\n# Phi-3\n")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["base_model"] = base
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    facts = model_card.gather(run, run_id)
    front, body = front_matter_and_body(model_card.render(facts, "alice/wren", merged=False).encode())
    assert front == {"base_model": base, "library_name": "peft", "license": "mit", "pipeline_tag": "text-generation",
                     "tags": ["phi3lora", "phi3", "lora", "peft"], "base_model_relation": "adapter"}
    assert f"- revision: {commit}" in body and f'from_pretrained("{base}", revision="{commit}")' in body
    adapter_config = json.loads(adapter_upload(run, facts, "alice/wren").files["adapter_config.json"])
    assert adapter_config["base_model_name_or_path"] == base and adapter_config["revision"] == commit

    readme.write_text("---\nlicense: \"mit\\n---\\ntags: [x]\"\n---\n")
    assert model_card.gather(run, run_id).base_license is None
