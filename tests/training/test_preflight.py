"""Before any weights load, a job is checked against its base model's config.json and tokenizer: a max_length past
the model's positions, lm_head as a LoRA target and a template whose assistant turns cannot be marked are refused
naming the setting. Phi-3 templates without a system role (Phi-3-medium, the first Phi-3-mini) get a training
template of ours with generation marks, and system text goes into the first user message in training and Compare.

The model folders here hold the real Phi-3 tokenizer and a real-shape config.json and NO weights: a check that let
the job through would end in a weight-load error instead of the refusal asserted."""
import json
import shutil

import pytest
import torch

from conftest import DEMO_MODEL, REPO
from phi3_templates import WITHOUT_SYSTEM_ROLE, WITHOUT_SYSTEM_ROLE_BOS, use_template
from phi3lora import data
from phi3lora.cli.commands import main as cli
from phi3lora.config import ConfigError, JobConfig
from phi3lora.inference.adapters import chat_prompt
from phi3lora.job_builder import override
from phi3lora.modeling import load_tokenizer
from phi3lora.training import preflight
from phi3lora.training.trainer import prepare

PHI3_TOKENIZER = REPO.parent / "shared" / "phi3-tokenizer"
MINI_4K = {"model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "hidden_size": 3072, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 8192, "vocab_size": 32064,
           "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "sliding_window": 2047,
           "bos_token_id": 1, "eos_token_id": 32000, "pad_token_id": 32000}
MEDIUM_4K = {**MINI_4K, "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
             "num_key_value_heads": 10, "intermediate_size": 17920}
SYSTEM = {"role": "system", "content": "Answer in one word."}
CHAT = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"}, {"role": "assistant", "content": "Rome, of course."}]


def _model_folder(tmp_path, shape: dict, template: str | None = None):
    """A Phi-3 model folder without weights: the real tokenizer and a real-shape config.json."""
    if not PHI3_TOKENIZER.is_dir():
        pytest.skip(f"the real Phi-3 tokenizer is expected at {PHI3_TOKENIZER}")
    folder = tmp_path / "phi3-no-weights"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(PHI3_TOKENIZER / name, folder / name)
    (folder / "config.json").write_text(json.dumps(shape))
    if template:
        use_template(folder, template)
    return folder


def _dataset(tmp_path, conversations: int = 6):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": [SYSTEM, *CHAT]}) + "\n" for _ in range(conversations)))
    return path


def _job(tmp_path, base, *settings):
    return override(JobConfig(), [f"data.path={_dataset(tmp_path)}", f"model.base_model={base}", "data.eval_size=0",
                                  *settings])


def _marked_spans(ids: list[int], marks: list[int], tokenizer) -> list[str]:
    """The decoded text of each run of marked tokens."""
    spans, run = [], []
    for token, marked in zip([*ids, None], [*marks, 0]):
        if marked:
            run.append(token)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans


@pytest.mark.parametrize("template", [WITHOUT_SYSTEM_ROLE, WITHOUT_SYSTEM_ROLE_BOS], ids=["medium", "first-mini"])
def test_a_template_without_system_role_gets_marks_covering_exactly_the_assistant_turns(tmp_path, template):
    folder = _model_folder(tmp_path, MEDIUM_4K, template)
    tokenizer = load_tokenizer(str(folder))
    ours = preflight.check(_job(tmp_path, folder), str(folder), tokenizer).training_template
    assert ours and "generation" in ours and ours != template
    for prompt in (False, True):  # it renders what the model's own template renders
        assert (tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=prompt, chat_template=ours)
                == tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=prompt))
    encoded = tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=True, chat_template=ours,
                                            return_assistant_tokens_mask=True)
    assert _marked_spans(encoded["input_ids"], encoded["assistant_masks"], tokenizer) == [
        "Paris.<|end|>", "Rome, of course.<|end|>"]


def test_system_text_goes_to_the_start_of_the_first_user_turn_in_training_text_and_compare(tmp_path):
    tokenizer = load_tokenizer(str(_model_folder(tmp_path, MEDIUM_4K, WITHOUT_SYSTEM_ROLE)))
    first_user = "<|user|>\nAnswer in one word.\n\nWhat is the capital of France?<|end|>\n<|assistant|>\n"
    assert data.render_text(tokenizer, [SYSTEM, *CHAT]).startswith(first_user)
    assert chat_prompt(tokenizer, [SYSTEM, CHAT[0]]) == first_user
    conversations = [data.Conversation(1, [SYSTEM, *CHAT])]
    assert data.system_role_note(tokenizer, conversations) == data.SYSTEM_ROLE_NOTE
    assert data.system_role_note(tokenizer, [data.Conversation(1, CHAT)]) is None  # no system text, nothing to say


def test_the_template_with_a_system_role_is_unchanged(tmp_path):
    tokenizer = load_tokenizer(str(_model_folder(tmp_path, MINI_4K)))
    original = tokenizer.chat_template
    assert data.for_template(tokenizer, [SYSTEM, *CHAT]) == [SYSTEM, *CHAT]
    assert data.render_text(tokenizer, [SYSTEM, *CHAT]).startswith("<|system|>\nAnswer in one word.<|end|>\n<|user|>\n")
    assert chat_prompt(tokenizer, [SYSTEM, CHAT[0]]).startswith("<|system|>\nAnswer in one word.<|end|>\n")
    assert data.system_role_note(tokenizer, [data.Conversation(1, [SYSTEM, *CHAT])]) is None
    trained_with = preflight.check(_job(tmp_path, "x"), str(tmp_path / "phi3-no-weights"), tokenizer).training_template
    assert (tokenizer.apply_chat_template([SYSTEM, *CHAT], tokenize=False, chat_template=trained_with)
            == tokenizer.apply_chat_template([SYSTEM, *CHAT], tokenize=False))  # trl's variant: the same text
    assert tokenizer.chat_template == original


def test_max_length_past_the_models_positions_is_refused_before_any_weights_load(tmp_path, monkeypatch, capsys):
    folder = _model_folder(tmp_path, MINI_4K)
    with pytest.raises(ConfigError, match=r"^training_config.max_length: 5000 tokens is more than .* 4096 positions"):
        prepare(_job(tmp_path, folder, "training_config.max_length=5000"), tmp_path / "out", log=lambda *_: None)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path / "home"))
    dataset = _dataset(tmp_path)
    for argv in (["validate", dataset, "--model", folder, "--max-length", "5000"],
                 ["train", "--data", dataset, "--model", folder, "--output", tmp_path / "cli", "--set", "max_length=5000"],
                 ["runs", "start", "--data", dataset, "--model", folder, "--set", "max_length=5000"]):
        assert cli([str(arg) for arg in argv]) == 1
        assert "error: training_config.max_length: 5000 tokens" in capsys.readouterr().err, argv[0]
    assert not (tmp_path / "home" / "runs").exists() or not any((tmp_path / "home" / "runs").iterdir())
    preflight.check(_job(tmp_path, folder, "training_config.max_length=4096"), str(folder), load_tokenizer(str(folder)))


def test_lm_head_as_a_lora_target_is_refused_naming_the_setting(tmp_path):
    folder = _model_folder(tmp_path, MINI_4K)
    with pytest.raises(ConfigError, match=r"^peft_config.target_modules: 'lm_head' cannot take LoRA"):
        prepare(_job(tmp_path, folder, "peft_config.target_modules=[qkv_proj, lm_head]"), tmp_path / "out")


def test_a_template_that_cannot_be_marked_is_refused_before_any_weights_load(tmp_path):
    chatml = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
              "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    folder = _model_folder(tmp_path, MINI_4K, chatml)
    with pytest.raises(ConfigError, match=r"^training_config.assistant_only_loss: the chat template of .* is not a Phi-3"):
        prepare(_job(tmp_path, folder), tmp_path / "out", log=lambda *_: None)


def test_the_trainer_learns_only_the_assistant_turns_of_a_template_without_system_role(tmp_path):
    """The demo model with a Phi-3-medium-shaped template: the trainer puts the system text into the first user
    turn, says so, and learns exactly the assistant's words and their <|end|>."""
    demo = tmp_path / "demo-medium"
    shutil.copytree(DEMO_MODEL, demo)
    use_template(demo, WITHOUT_SYSTEM_ROLE)
    lines = []
    job = prepare(_job(tmp_path, demo, "max_steps=1"), tmp_path / "out", log=lines.append)
    assert data.SYSTEM_ROLE_NOTE in lines
    tokenizer = job.trainer.processing_class
    assert tokenizer.chat_template == WITHOUT_SYSTEM_ROLE  # the tokenizer saved with the adapter keeps the model's
    row = job.trainer.train_dataset[0]
    assert tokenizer.decode(row["input_ids"]).startswith(
        "<|user|>\nAnswer in one word.\n\nWhat is the capital of France?<|end|>\n<|assistant|>\n")
    learned = [int(label != -100) for label in next(iter(job.trainer.get_train_dataloader()))["labels"][0].tolist()]
    assert _marked_spans(row["input_ids"], learned, tokenizer) == ["Paris.<|end|>\n", "Rome, of course.<|end|>\n"]


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_lora_weights_stay_fp32_under_fp16(tmp_path, method):
    """A base in fp16 (as on a T4): the trainable LoRA weights are fp32, so the gradient scaler can unscale them
    (peft upcasts them; under QLoRA trl casts them to bf16, which such a GPU only emulates, and the trainer undoes it)."""
    job = prepare(_job(tmp_path, "demo", "model.dtype=float16", f"method={method}", "max_steps=1"), tmp_path / "out",
                  log=lambda *_: None)
    assert job.trainer.args.fp16
    trainable = {name: p.dtype for name, p in job.trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}


def test_validate_says_where_system_text_goes(tmp_path, capsys):
    folder = _model_folder(tmp_path, MEDIUM_4K, WITHOUT_SYSTEM_ROLE)
    assert cli(["validate", str(_dataset(tmp_path)), "--model", str(folder)]) == 0
    assert data.SYSTEM_ROLE_NOTE in capsys.readouterr().out.splitlines()
    report = data.report(data.read_dataset(_dataset(tmp_path)), load_tokenizer(str(folder)))
    assert report["notes"] == [data.SYSTEM_ROLE_NOTE]


def test_the_data_tab_says_where_system_text_goes(tmp_path):
    """(Most of its time is importing gradio, which the UI tests pay for once per worker anyway.)"""
    from phi3lora.ui.data_tab import summary_text

    tokenizer = load_tokenizer(str(_model_folder(tmp_path, MEDIUM_4K, WITHOUT_SYSTEM_ROLE)))
    report = data.report(data.read_dataset(_dataset(tmp_path)), tokenizer)
    assert data.SYSTEM_ROLE_NOTE in summary_text({"name": "chat.jsonl", "source": "uploaded"}, report, [], 2048)
