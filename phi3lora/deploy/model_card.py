"""The model card (README.md) a Hub push uploads with an adapter or a merged model, and the facts it is made of.

What a reader needs and nothing of the training data: the base model (its Hub id, the revision this machine has,
its license as the base's own card states it), the method and the resolved config, the dataset's name, size and
format (never its records), the training and held-out figures, the blind win rate when there are votes, and how to
load the result with plain peft (or plain transformers, merged).

Every value that comes from a user (the dataset's file name, the base model's name, the config's values) reaches
the card escaped: the YAML front matter, built with huggingface_hub's ModelCardData, holds only values checked
against the Hub's own shapes (ids, license names) and fixed words; the text below it quotes user values on one line
with markdown and HTML neutralised, and the config sits in a code fence longer than any backtick run inside it.
"""
from __future__ import annotations

import html
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import data
from ..base_model import DEMO_MODEL_DIR, model_file
from ..inference import votes
from ..inference.adapter_info import AdapterError, peft_base
from ..tasks.records import read_record

HUB_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
LICENSE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")  # the Hub's license ids: mit, apache-2.0, llama3.1, other
SNAPSHOT = re.compile(r"[/\\]snapshots[/\\]([0-9a-f]{40})[/\\]")  # the hub cache's folder of one commit
MAX_QUOTED = 200  # characters of a user's value the card quotes
_MARKDOWN = re.compile(r"([\\`*_\[\]()#|~!{}<>])")


def is_hub_id(name: str | None) -> bool:
    """OWNER/NAME as the Hub spells it (no paths, no '--' or '..', no unicode)."""
    return bool(name) and bool(HUB_ID.fullmatch(name)) and ".." not in name and "--" not in name \
        and not name.endswith(".git")


@dataclass
class CardFacts:
    """What the card says, gathered from a run folder (or an adapter folder written by `train --output`)."""
    run_id: str | None
    method: str  # "lora" or "qlora"
    base_name: str  # as the run names it: "demo", a Hub id or a folder (shown by name only)
    base_hub_id: str | None  # the base's Hub id when it has one
    base_revision: str | None  # the commit of the base this machine has (the hub cache's snapshot)
    base_license: str | None  # as the base model's own card states it
    dataset_name: str
    dataset_format: str | None
    dataset_bytes: int | None
    training: dict[str, Any] = field(default_factory=dict)  # summary.json's figures
    evaluation: dict[str, Any] | None = None  # the run's held-out evaluation (inference/evaluation.py), when current
    win_rate: Any = None  # inference.votes.WinRate, when the run has votes
    config: dict[str, Any] = field(default_factory=dict)  # the resolved job, without this server's paths

    @property
    def is_demo(self) -> bool:
        return self.base_name == "demo"

    @property
    def base_reference(self) -> str:
        """What adapter_config.json names as the base on the Hub: its id, else the folder's name (never a path)."""
        return self.base_hub_id or ("phi3lora demo_model" if self.is_demo else Path(self.base_name).name)


# --- gathering ---------------------------------------------------------------------------------------------

def gather(folder: Path, run_id: str | None) -> CardFacts:
    """The card's facts for the adapter in `folder` (a run folder when `run_id` is given)."""
    config = _read_yaml(folder / "config.yaml")
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    meta = read_record(folder / "run.json") or {}
    base_name = str(model.get("base_model") or _peft_base(folder) or "unknown")
    if base_name != "demo" and _same_folder(base_name, DEMO_MODEL_DIR):
        base_name = "demo"
    hub_id = base_name if is_hub_id(base_name) and not Path(base_name).exists() else None
    data_section = config.get("data") if isinstance(config.get("data"), dict) else {}
    data_path = Path(str(data_section.get("path") or ""))
    dataset_name = str(meta.get("dataset") or data_path.name or "unknown")
    snapshot = next((p for p in (folder / "dataset" / Path(dataset_name).name, data_path)
                     if str(p) not in ("", ".") and p.is_file()), None)
    facts = CardFacts(
        run_id=run_id, method=str(meta.get("method") or ("qlora" if model.get("load_in_4bit") else "lora")),
        base_name=base_name, base_hub_id=hub_id, base_revision=base_revision(hub_id),
        base_license=base_license(hub_id or (None if base_name in ("demo", "unknown") else base_name)),
        dataset_name=dataset_name, dataset_format=_dataset_format(snapshot, data_section),
        dataset_bytes=snapshot.stat().st_size if snapshot else None,
        training=_read_json(folder / "summary.json"), config=_shareable_config(config, dataset_name))
    if run_id:
        facts.evaluation = _current_evaluation(folder)
        tally = votes.win_rate(run_id)
        facts.win_rate = tally if tally.votes else None
    return facts


def _read_yaml(path: Path) -> dict:
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return values if isinstance(values, dict) else {}


def _read_json(path: Path) -> dict:
    """A JSON object the trainer or peft wrote (not a write-once record: it may lack the final newline)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return values if isinstance(values, dict) else {}


def _peft_base(folder: Path) -> str | None:
    try:
        return peft_base(folder / "adapter_config.json")
    except AdapterError:  # unreadable: the card says "unknown"
        return None


def _same_folder(path: str, folder: Path) -> bool:
    try:
        return Path(path).resolve() == folder
    except (OSError, ValueError):
        return False


def base_revision(hub_id: str | None) -> str | None:
    """The commit of the base this machine holds in its hub cache (the one training loaded), if any."""
    if not hub_id:
        return None
    found = SNAPSHOT.search(str(model_file(hub_id, "config.json", parse=False) or ""))
    return found.group(1) if found else None


def base_license(name_or_path: str | None) -> str | None:
    """The `license` of the base model's own card (README.md front matter), when it states one the Hub knows the
    shape of; None when there is no card here or it states none."""
    from huggingface_hub.repocard import metadata_load

    card = model_file(name_or_path, "README.md", parse=False) if name_or_path else None
    try:
        metadata = metadata_load(card) if card else None
    except (OSError, ValueError, yaml.YAMLError):
        return None
    value = (metadata or {}).get("license")
    return value if isinstance(value, str) and LICENSE.match(value) else None


def _dataset_format(snapshot: Path | None, data_section: dict) -> str | None:
    chosen = data_section.get("format")
    if isinstance(chosen, str) and chosen != "auto":
        return chosen
    if snapshot is None:
        return None
    try:  # the format the run's reader detected: the same reading, of the same snapshot
        return data.read_dataset(snapshot, "auto", columns=data_section.get("columns")).format
    except Exception:  # a card without the format is better than no push
        return None


def _current_evaluation(folder: Path) -> dict[str, Any] | None:
    """The run's held-out evaluation, unless the adapter changed after it (a resumed run)."""
    summary = read_record(folder / "evaluation" / "summary.json")
    weights = folder / "adapter_model.safetensors"
    if not summary or not weights.is_file() or summary.get("adapter_modified_at") != weights.stat().st_mtime:
        return None
    return summary


def _shareable_config(config: dict, dataset_name: str) -> dict:
    """The resolved job as the card shows it: the dataset by its name, a local base by its folder's name."""
    shared = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    if isinstance(shared.get("data"), dict) and shared["data"].get("path"):
        shared["data"]["path"] = dataset_name
    model = shared.get("model")
    if isinstance(model, dict) and isinstance(model.get("base_model"), str) and "/" in model["base_model"] \
            and not is_hub_id(model["base_model"]):
        model["base_model"] = Path(model["base_model"]).name
    return shared


# --- the card ----------------------------------------------------------------------------------------------

def render(facts: CardFacts, repo: str, merged: bool) -> str:
    """README.md for the repository `repo`: YAML front matter (huggingface_hub's ModelCardData), then the text."""
    from huggingface_hub import ModelCard, ModelCardData

    method = "QLoRA" if facts.method == "qlora" else "LoRA"
    tags = ["phi3lora", "phi3", facts.method, *(["merged"] if merged else ["peft"])]
    metadata = ModelCardData(
        base_model=facts.base_hub_id, library_name="transformers" if merged else "peft",
        license=facts.base_license, pipeline_tag="text-generation", tags=tags,
        base_model_relation=("finetune" if merged else "adapter") if facts.base_hub_id else None)
    body = "\n".join([
        f"# {repo.split('/')[1]}",
        "",
        (f"The base model with a {method} adapter merged into its weights" if merged else f"A {method} adapter") +
        f" for {_base_text(facts)}, fine-tuned with phi3lora"
        + (f" (run {inline(facts.run_id)})." if facts.run_id else "."),
        "",
        *_base_section(facts),
        *_data_section(facts),
        *_figures_section(facts),
        *_loading_section(facts, repo, merged),
        *_config_section(facts),
    ])
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}\n"))


def inline(value: Any) -> str:
    """A user's value as one harmless line of markdown: invisible and control characters shown as U+XXXX, HTML
    escaped, markdown's markup characters escaped, cut at MAX_QUOTED characters."""
    text = "".join(ch if ch.isprintable() and unicodedata.category(ch) not in ("Cf", "Zl", "Zp") else f"U+{ord(ch):04X}"
                   for ch in str(value))
    text = text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED - 1] + "…"
    return _MARKDOWN.sub(r"\\\1", html.escape(text, quote=True))


def _base_text(facts: CardFacts) -> str:
    if facts.is_demo:
        return "phi3lora's embedded demo model (a tiny Phi-3, `phi3lora/demo_model`; not on the Hub)"
    if facts.base_hub_id:
        return f"[{facts.base_hub_id}](https://huggingface.co/{facts.base_hub_id})"
    return f"the local model {inline(Path(facts.base_name).name)}"


def _base_section(facts: CardFacts) -> list[str]:
    revision = facts.base_revision or "not recorded (the base was not loaded from the Hub cache here)"
    license_line = (f"`{facts.base_license}`, as the base model's card states it" if facts.base_license else
                    "not stated by a base model card available here: check the base model's terms before sharing")
    return ["## Base model", "", f"- model: {_base_text(facts)}", f"- revision: {revision}",
            f"- license: {license_line}", ""]


def _data_section(facts: CardFacts) -> list[str]:
    training = facts.training
    counts = [f"{training[key]} {word}" for key, word in (("train_conversations", "for training"),
                                                         ("eval_conversations", "held out"))
              if isinstance(training.get(key), int)]
    size = f"{facts.dataset_bytes:,} bytes" if facts.dataset_bytes is not None else "size not recorded"
    return ["## Training data", "",
            f"- dataset: {inline(facts.dataset_name)} ({inline(facts.dataset_format or 'format not recorded')}, "
            f"{size})",
            f"- conversations: {', '.join(counts) if counts else 'not recorded'}",
            "- the dataset itself is not part of this repository", ""]


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _figures_section(facts: CardFacts) -> list[str]:
    training = facts.training
    lines = ["## Results", "", f"- method: {'QLoRA (4-bit NF4 base)' if facts.method == 'qlora' else 'LoRA'}"]
    if training:
        lines += [f"- steps: {training.get('global_step', '-')} of {training.get('max_steps', '-')}",
                  f"- final train loss: {_number(training.get('train_loss'))}",
                  f"- final eval loss (held-out split): {_number(training.get('eval_loss'))}"]
        if isinstance(training.get("trainable_parameters"), int):
            lines.append(f"- trainable parameters: {training['trainable_parameters']:,} of "
                         f"{training.get('total_parameters', 0):,}")
    evaluation = facts.evaluation
    if evaluation:
        lines += ["", f"Held-out evaluation ({evaluation.get('eval_conversations')} conversations, "
                      f"{evaluation.get('eval_tokens')} scored tokens):", "",
                  "| model | loss | perplexity |", "|---|---|---|",
                  f"| base | {_number(evaluation.get('base_loss'))} | {_number(evaluation.get('base_perplexity'), 2)} |",
                  f"| adapted | {_number(evaluation.get('adapted_loss'))} | "
                  f"{_number(evaluation.get('adapted_perplexity'), 2)} |"]
    if facts.win_rate is not None:
        lines += ["", f"Blind comparison against other answers (phi3lora's Compare tab): {facts.win_rate.describe()}."]
    return [*lines, ""]


def _loading_section(facts: CardFacts, repo: str, merged: bool) -> list[str]:
    if merged:
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}")']
        note = "A complete model: it loads with plain transformers, no peft needed."
    else:
        base = facts.base_hub_id or ("path/to/phi3lora/demo_model" if facts.is_demo else "path/to/the/base/model")
        code = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'base = AutoModelForCausalLM.from_pretrained("{base}"'
                + (f', revision="{facts.base_revision}")' if facts.base_revision else ")"),
                f'model = PeftModel.from_pretrained(base, "{repo}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo}")']
        note = ("The adapter holds only the LoRA weights: load the base model, then the adapter on top, with plain "
                "peft." + (" The demo model ships inside phi3lora (`phi3lora/demo_model`): load it from there."
                           if facts.is_demo else ""))
    return ["## How to load it", "", note, "", "```python", *code, "```", "",
            "Chat in Phi-3's format (`tokenizer.apply_chat_template`); generation stops at `<|end|>`.", ""]


def _config_section(facts: CardFacts) -> list[str]:
    if not facts.config:
        return []
    text = yaml.safe_dump(facts.config, sort_keys=False, allow_unicode=False, width=100)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)  # a fence the config's own text cannot close
    return ["## Resolved configuration", "",
            "Every setting the run used (`python -m phi3lora train --config config.yaml --data YOUR_FILE` reruns it):",
            "", f"{fence}yaml", text.rstrip("\n"), fence, ""]
