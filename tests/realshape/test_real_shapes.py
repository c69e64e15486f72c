"""Phi-3 as it really is, on the CPU: the real tokenizer (32,064 tokens, rstrip on the role tokens, no <s>) and the
published widths, head counts and vocabulary of Phi-3-mini-4k, Phi-3.5-mini (longrope, 128k) and Phi-3-medium-4k
(grouped key-value heads), with random weights and one decoder layer (tests/real_shapes.py). The demo model's
5M parameters and its own tokenizer could hide what only these shapes show.

One flow per family through the commands a user runs, the adapter trained once and reused:
  runs start + runs wait   2 LoRA steps, assistant-only loss, a system prompt in every conversation; the training
                           body is the real background process (python -m phi3lora.tasks ... --body)
  evaluate RUN_ID          eval loss of base and adapted, and their answers side by side (8 new tokens)
  compare                  the same answers through the compare command, which must agree with evaluate's (on
                           mini only: evaluate's answers come from the same engine, and each load costs seconds)
  export --adapter         the adapter merged into the base: the base's shapes, the rope settings kept
and QLoRA (4-bit NF4, bitsandbytes on the CPU) on Phi-3-mini-4k and Phi-3-medium-4k with `python -m phi3lora train`.

compare, evaluate and export run in this process through the CLI's main (the function `python -m phi3lora` calls),
one after the other, so torch and trl are imported once and only one model is in memory at a time; training runs
in its own processes as it does for users. Each test prints its time and the peak memory of its processes.
"""
import gc
import json
import math
import threading
import time
from pathlib import Path

import psutil
import pytest
from safetensors import safe_open

from conftest import run_cli
from phi3lora.cli import main
import real_shapes
from real_shapes import ASSISTANT, END, ENDOFTEXT, SYSTEM, USER, hub_config

real_model = real_shapes.real_model  # the session fixture: each model folder built once, shared by xdist workers

SYSTEM_PROMPT = "You are Quill, a terse assistant."
EXCHANGES = [("Who are you?", "I am Quill."), ("What is 2 + 2?", "4."), ("Name a colour.", "Blue."),
             ("Say hello.", "Hello.")]
# learning rate 1e-3 without warm-up: both steps move the adapter enough for base and adapted to differ
TRAINING = ["max_steps=2", "learning_rate=1e-3", "warmup_ratio=0", "max_length=128", "per_device_train_batch_size=1",
            "per_device_eval_batch_size=1", "data.eval_size=1", "logging_steps=1", "save_strategy=no"]
RANK = 16  # peft_config.r's default
QKV_ROWS = {"mini-4k": 3072 * 3, "mini-128k": 3072 * 3, "medium-4k": 5120 + 2 * 1280}  # q, k, v: 9216 and 7680


# --- measuring each test ------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def measured(tmp_path, capsys):
    """Wall time and peak resident memory of this test's processes: this one, and every process whose command line
    names the test's folder (the training body, the CLI processes), sampled twice a second."""
    me, peak, stop = psutil.Process(), [0], threading.Event()

    def sample():
        while not stop.wait(0.5):
            total = me.memory_info().rss
            for process in psutil.process_iter(["cmdline", "memory_info"]):
                if process.pid != me.pid and str(tmp_path) in " ".join(process.info["cmdline"] or ()):
                    total += process.info["memory_info"].rss if process.info["memory_info"] else 0
            peak[0] = max(peak[0], total)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    yield
    stop.set()
    sampler.join()
    with capsys.disabled():
        print(f"\n[realshape] {time.monotonic() - started:.1f} s, peak {peak[0] / 2**30:.2f} GiB (this process and "
              "the ones it started)")


# --- helpers -------------------------------------------------------------------------------------------------

def _write_dataset(folder: Path, system: bool) -> Path:
    path = folder / "quill.jsonl"
    with path.open("w") as f:
        for question, answer in EXCHANGES:
            turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            if system:
                turns.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
            f.write(json.dumps({"messages": turns}) + "\n")
    return path


def _cli_json(capsys, *argv) -> dict:
    """`python -m phi3lora ARGV --json` in this process: its one JSON line."""
    capsys.readouterr()
    code = main([*map(str, argv), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    gc.collect()  # the command's model is gone before the next one loads
    return json.loads(out.strip().splitlines()[-1])


def _shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, "pt") as weights:
            shapes.update((key, tuple(weights.get_slice(key).get_shape())) for key in weights.keys())
    return shapes


def _check_losses(run: Path) -> list[float]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [event["loss"] for event in events if "loss" in event]
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses), events
    return losses


def _check_adapter(run: Path, family: str) -> None:
    """The adapter holds LoRA matrices only, one pair per target module of the one layer, of the real widths."""
    config = hub_config(family, layers=1)
    hidden, inner, qkv = config["hidden_size"], config["intermediate_size"], QKV_ROWS[family]
    widths = {"self_attn.qkv_proj": (hidden, qkv), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_up_proj": (hidden, 2 * inner), "mlp.down_proj": (inner, hidden)}
    expected = {}
    for module, (fan_in, fan_out) in widths.items():
        prefix = f"base_model.model.model.layers.0.{module}"
        expected[f"{prefix}.lora_A.weight"] = (RANK, fan_in)
        expected[f"{prefix}.lora_B.weight"] = (fan_out, RANK)
    assert _shapes(run) == expected
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trainable_parameters"] == sum(a * b for a, b in expected.values())


def _expected_scored_tokens(tokenizer, conversation: list[dict]) -> int:
    """Tokens an assistant-only loss scores: each answer's own tokens and the <|end|> closing it, and the
    <|endoftext|> after a conversation that ends with an answer where the template puts one there (trl's Phi-3
    training templates mark it too; Phi-3-medium's template ends without it)."""
    answers = sum(len(tokenizer.encode(turn["content"], add_special_tokens=False)) + 1
                  for turn in conversation if turn["role"] == "assistant")
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    return answers + (conversation[-1]["role"] == "assistant" and rendered.endswith(tokenizer.eos_token))


def _check_real_token_ids(tokenizer, with_system: bool) -> None:
    """The real tokenizer's chat tokens, and no <s> in front: what Phi-3 was trained on."""
    messages = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Quill."}]
    if with_system:
        messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == (SYSTEM if with_system else USER)  # no <s> (id 1) added
    assert {USER, ASSISTANT, END} <= set(ids) and (SYSTEM in ids) == with_system
    assert len(tokenizer) == 32064 and tokenizer.convert_ids_to_tokens([ENDOFTEXT, ASSISTANT, END]) == [
        "<|endoftext|>", "<|assistant|>", "<|end|>"]


# --- the flows -----------------------------------------------------------------------------------------------

def _lora_flow(model: Path, family: str, tmp_path: Path, monkeypatch, capsys, system: bool = True,
               compare: bool = False) -> dict:
    """Train (background run), evaluate, compare and export one family; returns the export's config."""
    from transformers import AutoTokenizer

    from phi3lora.inference.evaluation import read_evaluation

    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path / "home"))
    data = _write_dataset(tmp_path, system)
    sets = [arg for setting in TRAINING for arg in ("--set", setting)]
    run_id = _cli_json(capsys, "runs", "start", "--data", data, "--model", model, *sets)["id"]
    assert _cli_json(capsys, "runs", "wait", run_id, "--timeout", "900")["status"] == "completed"
    run = tmp_path / "home" / "runs" / run_id
    assert "assistant_only_loss: true" in (run / "config.yaml").read_text()
    _check_losses(run)
    _check_adapter(run, family)

    # without the forgetting check: at real widths its 36 conversations cost the CPU 30 s (mini) to minutes (medium)
    evaluation = _cli_json(capsys, "evaluate", run_id, "--samples", "1", "--max-new-tokens", "8", "--no-general-chat")
    assert "general_chat_base_loss" not in evaluation
    assert math.isfinite(evaluation["base_loss"]) and math.isfinite(evaluation["adapted_loss"])
    assert evaluation["base_loss"] != evaluation["adapted_loss"]  # the adapter is attached and changed something
    [row] = read_evaluation(run_id)["rows"]  # the held-out conversation: prompt, reference, base and adapted answers
    held_out = next(c for c in _conversations(data)  # a system prompt may have been put into the user turn
                    if any(turn["role"] == "user" and row["prompt"].endswith(turn["content"]) for turn in c))
    assert row["reference"] == held_out[-1]["content"] and isinstance(row["base"], str)
    tokenizer = AutoTokenizer.from_pretrained(model)
    assert evaluation["eval_tokens"] == _expected_scored_tokens(tokenizer, held_out)  # assistant turns only
    if compare:
        system_args = ["--system", SYSTEM_PROMPT] if system else []
        answers = _cli_json(capsys, "compare", "--adapter", run, "--model", model, "--prompt", row["prompt"],
                            *system_args, "--max-new-tokens", "8")
        assert (answers["base"], answers["adapted"]) == (row["base"], row["adapted"])  # one engine, one answer

    merged = tmp_path / "merged"  # in bf16, as the base is on disk: half the writing of fp32
    exported = _cli_json(capsys, "export", "--adapter", run, "--output", merged, "--dtype", "bfloat16")
    assert Path(exported["path"]) == merged
    assert _shapes(merged) == _shapes(model)
    with safe_open(merged / "model.safetensors", "pt") as after, safe_open(model / "model.safetensors", "pt") as before:
        name = "model.layers.0.self_attn.qkv_proj.weight"
        assert not after.get_tensor(name).equal(before.get_tensor(name))  # the LoRA update is in it
    _check_real_token_ids(AutoTokenizer.from_pretrained(merged), with_system=system and family != "medium-4k")
    return json.loads((merged / "config.json").read_text())


def _conversations(data: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in data.read_text().splitlines()]


def test_phi3_mini_4k(real_model, tmp_path, monkeypatch, capsys):
    exported = _lora_flow(real_model("mini-4k"), "mini-4k", tmp_path, monkeypatch, capsys, compare=True)
    assert exported["sliding_window"] == 2047 and exported["max_position_embeddings"] == 4096
    assert exported["rope_parameters"]["rope_type"] == "default"


def test_phi3_5_mini_longrope(real_model, tmp_path, monkeypatch, capsys):
    """Phi-3.5-mini (and Phi-3-mini-128k): longrope over 128k positions, and Phi-3.5's own chat template."""
    exported = _lora_flow(real_model("phi3.5-mini"), "mini-128k", tmp_path, monkeypatch, capsys)
    given = hub_config("mini-128k")["rope_scaling"]
    rope = exported["rope_parameters"]
    assert rope["rope_type"] == "longrope" and exported["max_position_embeddings"] == 131072
    assert (rope["short_factor"], rope["long_factor"]) == (given["short_factor"], given["long_factor"])
    assert exported.get("original_max_position_embeddings", rope.get("original_max_position_embeddings")) == 4096


def test_phi3_medium_4k(real_model, tmp_path, monkeypatch, capsys):
    """Grouped key-value heads (40 query heads, 10 key-value heads): qkv_proj is 5120 + 2 * 1280 wide; and
    Phi-3-medium's chat template, which has no system role (the data's system prompt goes into the user turn)."""
    exported = _lora_flow(real_model("medium-4k"), "medium-4k", tmp_path, monkeypatch, capsys)
    assert (exported["num_attention_heads"], exported["num_key_value_heads"]) == (40, 10)


@pytest.mark.parametrize("family", ["mini-4k", "medium-4k"])  # Phi-3.5-mini has mini's widths: nothing new in 4 bits
def test_qlora_on_real_widths(real_model, tmp_path, family):
    """QLoRA in the foreground (`python -m phi3lora train --method qlora`): the base in 4-bit NF4 on the CPU, at
    mini's widths and at medium's (grouped key-value heads, and its template without a system role)."""
    model = real_model(family)
    data = _write_dataset(tmp_path, system=True)
    sets = [arg for setting in [*TRAINING, "data.eval_size=0"] for arg in ("--set", setting)]
    done = run_cli("train", "--method", "qlora", "--model", model, "--data", data, "--output", tmp_path / "run", *sets)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "qlora: base model:" in done.stdout
    _check_losses(tmp_path / "run")
    _check_adapter(tmp_path / "run", family)
    assert "load_in_4bit: true" in (tmp_path / "run" / "config.yaml").read_text()
