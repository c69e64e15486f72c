"""Attacks through what a user hands the server: an adapter that asks for remote code or another base, YAML alias
bombs, prompts too long for one model thread, replayed blind votes, spreadsheet formulas, endless runs.

Each test reproduces an attack of the security review as it was made, through the functions the app's handlers
and the CLI call (tests/test_security.py does the same over HTTP against the real server).
"""
import json
import re
import shutil
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import DEMO_MODEL, run_cli
from phi3lora.inference import service
from phi3lora.inference import evaluation
from phi3lora.runs import lifecycle
from phi3lora.policy import limits
from phi3lora.inference import votes
from phi3lora.policy.allowed_models import BaseModelNotAllowed
from phi3lora.config import ConfigError, JobConfig, load_yaml
from phi3lora.errors import UserError
from phi3lora.job_builder import load_job, override

EVIL_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("remote code ran")
from transformers import PretrainedConfig
class EvilConfig(PretrainedConfig):
    model_type = "evil"
"""


def evil_base(folder: Path) -> tuple[Path, Path]:
    """A model folder whose Python code writes a marker file when transformers imports it (trust_remote_code)."""
    marker = folder.parent / "remote-code-ran"
    folder.mkdir(parents=True)
    (folder / "evil.py").write_text(EVIL_MODULE.format(marker=str(marker)))
    auto_map = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilConfig",
                "AutoTokenizer": ["evil.EvilConfig", None]}
    (folder / "config.json").write_text(json.dumps({"model_type": "evil", "auto_map": auto_map}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": auto_map}))
    return folder, marker


def adapter_asking_for(run_adapter: Path, target: Path, model: dict) -> Path:
    """A copy of a real adapter whose config.yaml asks for `model` settings."""
    target.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copyfile(run_adapter / name, target / name)
    config = load_job(run_adapter / "config.yaml").to_dict()
    config["model"].update(model)
    (target / "config.yaml").write_text(json.dumps(config))
    return target


def zipped(folder: Path) -> Path:
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for path in folder.iterdir():
            z.write(path, path.name)
    return archive


@pytest.fixture
def home(finished_copy, monkeypatch):
    for name in ("PHI3LORA_ALLOWED_BASE_MODELS", "PHI3LORA_ALLOW_REMOTE_CODE", "PHI3LORA_MAX_PROMPT_TOKENS"):
        monkeypatch.delenv(name, raising=False)
    return finished_copy


def chat_with(choice, prompt="Who are you?", max_new_tokens=4):
    conversation = [{"role": "user", "content": prompt}]
    texts = []
    for texts in service.ChatService().stream([choice], [service.BASE_COLUMN, choice.ref], [conversation, conversation],
                                           max_new_tokens=max_new_tokens):
        pass
    return texts


# --- 1. remote code from an adapter ---------------------------------------------------------------------------

def test_an_uploaded_adapter_cannot_pick_a_base_with_remote_code(home, tmp_path):
    home, run_id = home
    folder, marker = evil_base(tmp_path / "evil-base")
    adapter = adapter_asking_for(home / "runs" / run_id, tmp_path / "evil-adapter",
                                 {"base_model": str(folder), "trust_remote_code": True})
    with pytest.raises(BaseModelNotAllowed, match="is not available on this server") as refused:
        chat_with(service.import_adapter_zip(zipped(adapter)))
    assert str(folder) not in str(refused.value) or "evil-base" in str(refused.value)  # names it, no existence hint
    assert not marker.exists(), "the adapter's base model code ran in the web process"


def test_an_adapter_never_turns_remote_code_on_even_for_an_allowed_base(home, tmp_path, monkeypatch):
    home, run_id = home
    folder, marker = evil_base(tmp_path / "evil-base")
    monkeypatch.setenv("PHI3LORA_ALLOWED_BASE_MODELS", f"demo,{folder}")  # the operator allows the folder, not its code
    adapter = adapter_asking_for(home / "runs" / run_id, tmp_path / "evil-adapter",
                                 {"base_model": str(folder), "trust_remote_code": True})
    choice = service.import_adapter_zip(zipped(adapter))
    assert choice.settings.trust_remote_code is False
    with pytest.raises(UserError):  # the folder is no model transformers knows without its code
        chat_with(choice)
    assert not marker.exists(), "the adapter's base model code ran in the web process"


def test_cli_compare_ignores_an_adapters_remote_code_and_refuses_its_base(home, tmp_path):
    home, run_id = home
    folder, marker = evil_base(tmp_path / "evil-base")
    adapter = adapter_asking_for(home / "runs" / run_id, tmp_path / "evil-adapter",
                                 {"base_model": str(folder), "trust_remote_code": True})
    refused = run_cli("compare", "--adapter", adapter, "--prompt", "Who are you?", "--max-new-tokens", "4")
    assert refused.returncode == 1 and "is not available on this server" in refused.stderr, refused.stderr[-2000:]
    assert "pass --model" in refused.stderr
    assert not marker.exists()
    # The operator names the base on the command line: it is used, and the adapter's remote-code wish is not.
    answered = run_cli("compare", "--adapter", adapter, "--model", "demo", "--prompt", "Who are you?",
                       "--max-new-tokens", "4", "--json")
    assert answered.returncode == 0, answered.stderr[-2000:]
    assert set(json.loads(answered.stdout)) == {"base", "adapted"} and not marker.exists()


# --- 3. YAML alias bombs ----------------------------------------------------------------------------------------

def alias_bomb(levels: int) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ntraining_config: {{max_steps: *a{levels - 1}}}\n"


def test_yaml_aliases_are_refused_before_they_expand():
    started = time.monotonic()
    with pytest.raises(ConfigError, match="aliases") as refused:
        load_yaml(alias_bomb(9), "settings")  # 9**9 leaves once expanded
    assert time.monotonic() - started < 1 and len(str(refused.value)) < 300


def test_an_adapter_zip_with_an_alias_bomb_is_refused_with_a_short_message(home, tmp_path):
    home, run_id = home
    adapter = adapter_asking_for(home / "runs" / run_id, tmp_path / "bomb", {})
    (adapter / "config.yaml").write_text(alias_bomb(6))
    with pytest.raises(UserError, match="aliases") as refused:
        service.import_adapter_zip(zipped(adapter))
    assert len(str(refused.value)) < 500


def test_config_errors_never_echo_long_input():
    with pytest.raises(ConfigError) as refused:
        override(JobConfig(), [f"training_config.lr_scheduler_type={'x' * 100_000}"])
    assert len(str(refused.value)) < 500
    with pytest.raises(ConfigError) as refused:
        override(JobConfig(), [f"{'k' * 100_000}=1"])
    assert len(str(refused.value)) < 500


@pytest.mark.parametrize("text", ["a: " + "9" * 5000, "[" * 100_000, "a: b\n" * 300_000],
                         ids=["5000 digits", "nested 100000 deep", "1.5 MB"])
def test_other_hostile_yaml_is_refused_with_a_message(text):
    with pytest.raises(ConfigError):
        load_yaml(text, "settings")


# --- 4. prompts too long for the one model thread -----------------------------------------------------------------

def test_a_prompt_over_the_token_limit_is_refused_before_generating(home, monkeypatch):
    _, run_id = home
    monkeypatch.setenv("PHI3LORA_MAX_PROMPT_TOKENS", "200")
    [choice] = service.ChatService().resolve([f"run:{run_id}"])
    started = time.monotonic()
    with pytest.raises(UserError, match=r"over this server's limit of 200 \(PHI3LORA_MAX_PROMPT_TOKENS\)"):
        chat_with(choice, prompt="tell me more " * 300)
    with pytest.raises(UserError, match="PHI3LORA_MAX_PROMPT_TOKENS"):  # far too long to be worth tokenising
        chat_with(choice, prompt="x" * 5_000_000)
    assert time.monotonic() - started < 60
    assert chat_with(choice, prompt="Who are you?")[1]  # a prompt within the limit is answered


def test_the_default_prompt_limit_fits_the_models_context():
    # the demo model's context is 4096 positions; an answer may take max_new_tokens of them
    assert limits.max_prompt_tokens(context=4096, max_new_tokens=512) == 3584
    assert limits.max_prompt_tokens(context=131072, max_new_tokens=512) == limits.DEFAULT_MAX_PROMPT_TOKENS


# --- smaller holes ------------------------------------------------------------------------------------------------

def test_a_blind_pair_takes_one_vote(home):
    _, run_id = home
    pair = votes.new_pair(votes.BASE_CONTENDER, run_id, "Who are you?")
    votes.record_pair_vote(pair, "B")
    with pytest.raises(votes.VoteError, match="already"):
        votes.record_pair_vote(pair, "B")
    assert votes.win_rate(run_id).votes == 1


@pytest.mark.parametrize("cell", ["=1+1", "\n=HYPERLINK(\"http://x\")", " =1+1", "\t@SUM(A1)", "  -2+3", "'quoted"])
def test_formula_cells_are_escaped_however_they_start(cell):
    escaped = evaluation.escape_cell(cell)
    assert escaped.startswith("'") and evaluation.unescape_cell(escaped) == cell


def test_plain_cells_are_left_alone():
    for cell in ("Hello", " spaced", "a = b", ""):
        assert evaluation.escape_cell(cell) == cell == evaluation.unescape_cell(cell)


@pytest.mark.parametrize("setting, value, variable", [
    ("training_config.max_steps", 10_000_000, "PHI3LORA_MAX_STEPS"),
    ("training_config.num_train_epochs", 1e9, "PHI3LORA_MAX_EPOCHS"),
])
def test_runs_cannot_be_endless(home, setting, value, variable, identity_data):
    config = override(JobConfig(), [f"data.path={identity_data}", "model.base_model=demo",
                                         f"{setting}={value}"])
    with pytest.raises(limits.LimitExceeded, match=f"{setting} is .*over this server's limit of .*{variable}"):
        lifecycle.start_run(config)


def test_an_unknown_run_is_refused_without_the_servers_paths(home):
    home, _ = home
    with pytest.raises(UserError) as refused:
        lifecycle.run_info("20200101-000000-abcdef")
    assert str(home) not in str(refused.value) and "/" not in str(refused.value)


def test_twenty_votes_at_once_on_one_pair_count_once(home):
    _, run_id = home
    pair = votes.new_pair(run_id, votes.BASE_CONTENDER, "Who are you?")

    def vote(_):
        try:
            return votes.record_pair_vote(pair, "A")
        except votes.VoteError:
            return None

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(vote, range(20)))
    assert outcomes.count([run_id]) == 1 and outcomes.count(None) == 19
    assert votes.win_rate(run_id).votes == 1


@pytest.mark.parametrize("text", ["![pixel](https://tracker.example/p.png)", "x ![a][ref]\n\n[ref]: https://t.example/i",
                                  "<img src=https://tracker.example/p.png>", "<IMG SRC='//t.example/p'>",
                                  "<video src=https://t.example/v>", "<iframe src=https://t.example>"])
def test_dataset_and_model_text_loads_no_images_in_chat_bubbles(text):
    from phi3lora.modeling import load_tokenizer
    from phi3lora.ui import data_tab

    conversation = [{"role": "user", "content": text}, {"role": "assistant", "content": text}]
    bubbles, template = data_tab.conversation_views([(1, conversation)], 0, load_tokenizer(str(DEMO_MODEL)))
    assert text in template  # the template view shows exactly what trains (a code box renders nothing)
    for bubble in bubbles:
        shown = bubble["content"]
        assert "![" not in shown and not re.search(r"<\s*(img|video|iframe)", shown, re.IGNORECASE), shown
        assert "example" in shown  # the link stays readable


@pytest.mark.parametrize("setting", ["data.eval_size=.inf", "training_config.num_train_epochs=.inf",
                                     "training_config.learning_rate=.nan", "training_config.max_grad_norm=-.inf"])
def test_settings_that_are_not_numbers_are_refused_with_the_field_named(setting):
    with pytest.raises(ConfigError, match=re.escape(setting.split("=")[0]) + ": .*finite"):
        override(JobConfig(), [setting])
