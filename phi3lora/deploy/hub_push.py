"""Push a trained adapter, or the merged model, to a Hugging Face Hub model repository, with a model card.

    python -m phi3lora push (--run RUN_ID | --adapter DIR) --repo OWNER/NAME [--public] [--merged] [--token-env VAR]

What is uploaded is an allow-list, listed before the upload starts:
  adapter   adapter_config.json (the base named by its Hub id, never this server's path), adapter_model.safetensors,
            the tokenizer files training saved beside them, config.yaml (the resolved job, the dataset by name),
            README.md (deploy/model_card.py);
  merged    the merged export's weights (*.safetensors), its JSON files (config, generation config, tokenizer),
            its chat template, config.yaml and README.md.
Never checkpoints, optimizer states, training_args.bin (a pickle), metrics, votes or the dataset. The push replaces
the repository's files with these in one commit (the Hub's history keeps earlier ones; .gitattributes stays).

`--merged` uses deploy/export.py's merge, never a second one: from a run, its newest completed export (made after
the adapter was saved), else a new export task the command waits for; from --adapter, a merge into a temporary
folder. The app never waits for a merge: it asks for an export first (the Runs tab's "Export merged model").

Private by default: the repository is created private, and an existing one is set private, unless --public. The
token is handled as `space push` handles it (deploy/space_hub.py): $HF_TOKEN, --token-env VAR or the saved
`hf auth login`; it goes to the Hub in the Authorization header only, and is never printed, stored or uploaded.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError, shorten
from ..runs import registry
from ..tasks.machine import COMPLETED
from . import model_card
from .export import export_status, start_export, wait_for_export
from .merge import merge_and_save
from .space_hub import check_online, hub_step, read_token, size_text

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.model")
MERGED_SUFFIXES = (".safetensors", ".json", ".jinja")  # plus tokenizer.model; never .bin or .pt (pickles)
KEEP_REMOTE = (".gitattributes",)
MAX_NAME = 96  # the Hub's limit for an owner's or a repository's name


class PushError(UserError, ValueError):
    """The push cannot be done as asked (a bad repository id, no adapter, no merged export, ...)."""


@dataclass
class HubPushOptions:
    repo: str
    public: bool = False
    merged: bool = False
    token_env: str | None = None  # None: $HF_TOKEN or the saved login


@dataclass
class Upload:
    """What one push sends: {path in the repository: a local file or the bytes written for it}."""
    files: dict[str, Path | bytes]

    @property
    def total_bytes(self) -> int:
        return sum(len(v) if isinstance(v, bytes) else v.stat().st_size for v in self.files.values())


def check_repo(repo: str) -> None:
    """OWNER/NAME as the Hub accepts it: ASCII letters, digits, '-', '_', '.', each name at most 96 characters,
    starting and ending with a letter or digit, no '--' or '..' (so no path, no space, no unicode look-alike)."""
    if not isinstance(repo, str) or len(repo) > 2 * MAX_NAME + 1 or not model_card.is_hub_id(repo):
        raise PushError(f"--repo {shorten(repo)} is not a Hub repository id: expected OWNER/NAME, each at most "
                        f"{MAX_NAME} letters, digits, '-', '_' or '.', starting and ending with a letter or digit, "
                        "without '--' or '..'")


# --- the two ways in ---------------------------------------------------------------------------------------

def push_run(run_id: str, options: HubPushOptions, log: Callable[[str], object] = print,
             export_if_missing: bool = True) -> str:
    """Push a finished run's adapter (or, with options.merged, its merged model); returns the repository's URL.
    Without `export_if_missing`, a merged push needs a completed export already (the app never waits for one)."""
    token = _before_anything(options)
    path = registry.run_dir(run_id)
    if problem := registry.adapter_problem(run_id, path, "push", "push it"):
        raise PushError(problem)
    facts = model_card.gather(path, run_id)
    if options.merged:
        model_dir = merged_export(run_id, log, export_if_missing)
        return _upload(merged_upload(model_dir, facts, options.repo), options, token, log, f"run {run_id}")
    return _upload(adapter_upload(path, facts, options.repo), options, token, log, f"run {run_id}")


def push_adapter(adapter_dir: str | Path, options: HubPushOptions, log: Callable[[str], object] = print) -> str:
    """Push an adapter folder (`train --output`'s), or with options.merged the model merged from it now."""
    token = _before_anything(options)
    folder = Path(adapter_dir)
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise PushError(f"{folder.name or folder} is not an adapter folder: {', '.join(missing)} missing "
                        "(has its training finished?)")
    facts = model_card.gather(folder, None)
    if not options.merged:
        return _upload(adapter_upload(folder, facts, options.repo), options, token, log, folder.name)
    with tempfile.TemporaryDirectory(prefix="phi3lora-merge-") as tmp:
        model_dir = merge_and_save(folder, Path(tmp) / "model", log=log)
        return _upload(merged_upload(model_dir, facts, options.repo), options, token, log, folder.name)


def _before_anything(options: HubPushOptions) -> str:
    """Every refusal that needs no run and no Hub: the id, the token, offline mode."""
    check_repo(options.repo)
    token = read_token(options.token_env)
    check_online()
    return token


# --- what is uploaded --------------------------------------------------------------------------------------

def adapter_upload(folder: Path, facts: model_card.CardFacts, repo: str) -> Upload:
    files: dict[str, Path | bytes] = {"adapter_config.json": _adapter_config(folder / "adapter_config.json", facts),
                                      "adapter_model.safetensors": folder / "adapter_model.safetensors"}
    files.update({name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()})
    return Upload({**files, **_card_files(facts, repo, merged=False)})


def merged_upload(model_dir: Path, facts: model_card.CardFacts, repo: str) -> Upload:
    files: dict[str, Path | bytes] = {
        path.name: path for path in sorted(model_dir.iterdir())
        if path.is_file() and (path.suffix in MERGED_SUFFIXES or path.name == "tokenizer.model")}
    if not any(name.endswith(".safetensors") for name in files):
        raise PushError(f"the merged model in {model_dir.name} holds no weights (*.safetensors): export it again")
    return Upload({**files, **_card_files(facts, repo, merged=True)})


def _card_files(facts: model_card.CardFacts, repo: str, merged: bool) -> dict[str, bytes]:
    import yaml

    files = {"README.md": model_card.render(facts, repo, merged).encode("utf-8")}
    if facts.config:
        files["config.yaml"] = yaml.safe_dump(facts.config, sort_keys=False).encode("utf-8")
    return files


def _adapter_config(path: Path, facts: model_card.CardFacts) -> bytes:
    """adapter_config.json naming the base as the Hub knows it (peft loads the base from there), never a path."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PushError(f"{path.parent.name}/adapter_config.json is not readable JSON") from None
    values["base_model_name_or_path"] = facts.base_reference
    if facts.base_revision:
        values["revision"] = facts.base_revision
    return (json.dumps(values, indent=2, sort_keys=True) + "\n").encode("utf-8")


def merged_export(run_id: str, log: Callable[[str], object], export_if_missing: bool) -> Path:
    """The run's newest completed merged export made from its current adapter, or (when allowed) a new one."""
    saved = (registry.run_dir(run_id) / "adapter_model.safetensors").stat().st_mtime
    for info in reversed(export_status(run_id)):
        if info["status"] == COMPLETED and info["path"] and (info["finished_at"] or 0) >= saved \
                and Path(info["path"]).is_dir() and info.get("format", "merged") == "merged":  # not an ONNX export
            log(f"using the merged model of export {info['export']}")
            return Path(info["path"])
    if not export_if_missing:
        raise PushError(f"run {run_id} has no merged export of its current adapter: export the merged model first "
                        "(Export merged model), then push it")
    number = start_export(run_id)
    log(f"no merged export of run {run_id} yet: merging it now (export {number}); this loads the whole base model")
    info = wait_for_export(run_id, number)
    if info["status"] != COMPLETED:
        raise PushError(f"the merge of run {run_id} (export {number}) {info['status']}"
                        + (f": {info['reason']}" if info["reason"] else ""))
    return Path(info["path"])


# --- the upload --------------------------------------------------------------------------------------------

def _upload(upload: Upload, options: HubPushOptions, token: str, log: Callable[[str], object], what: str) -> str:
    """Create (or reuse) the repository with the visibility asked for, then one commit: these files in, every other
    file out. huggingface_hub's own client does the HTTP, with the token in the Authorization header."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api, repo = HfApi(token=token), options.repo
    visibility = "public" if options.public else "private"
    log(f"uploading {len(upload.files)} files ({size_text(upload.total_bytes)}) to {repo} ({visibility}): "
        + ", ".join(sorted(upload.files)))
    with hub_step(f"creating the repository {repo}"):
        api.create_repo(repo, repo_type="model", private=not options.public, exist_ok=True)
    with hub_step(f"making {repo} {visibility}"):  # create_repo leaves an existing repository as it was
        api.update_repo_settings(repo, private=not options.public)
    with hub_step(f"listing the files of {repo}"):
        remote = api.list_repo_files(repo)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes)
                                     else str(content)) for name, content in sorted(upload.files.items())]
    operations += [CommitOperationDelete(path_in_repo=name) for name in remote
                   if name not in upload.files and name not in KEEP_REMOTE]
    kind = "merged model" if options.merged else "adapter"
    with hub_step(f"uploading to {repo}"):
        api.create_commit(repo, operations, commit_message=f"phi3lora: {kind} of {what}")
    url = f"https://huggingface.co/{repo}"
    log(f"done: {url}")
    return url
