"""Every environment variable phi3lora honours: declared, parsed, validated and documented here, and read nowhere
else (tests/test_settings.py checks that). No torch, no gradio: the app and the CLI check the environment with
`check_all()` before importing either.

Each variable is read when it is asked for, never cached at import: tests change variables with monkeypatch, and
child processes (the run supervisor, the trainer) inherit the environment of the moment.

One convention for every kind: an empty or blank value counts as unset (the default applies); a boolean is one of
1/true/yes/on or 0/false/no/off; anything a variable does not allow is refused as `NAME=value: what is allowed`.
README's table of variables is `markdown_table()` (`python -m phi3lora.settings` prints it).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
SHOWN_VALUE_CHARS = 60  # a value quoted in a message is cut here


class SettingsError(UserError, ValueError):
    """One or more environment variables hold a value they do not allow; the message names each."""


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str  # int, float, bool, str, list or choice
    default: Any  # the parsed default; None where it is computed elsewhere (see `default_text`)
    meaning: str  # one line, for README's table
    group: str  # which part of the app it concerns: sign-in, models, limits, runs, compare
    least: float | None = None  # int and float: the smallest value allowed
    most: float | None = None  # int and float: the largest value allowed
    above: bool = False  # float: `least` itself is not allowed
    choices: tuple[str, ...] = ()  # choice: the values allowed
    default_text: str = ""  # README's default when it is not simply `default`
    secret: bool = False  # never quoted in a message (PHI3LORA_USERS holds passwords)

    def allowed(self) -> str:
        """What the variable allows, as the end of an error message."""
        if self.kind == "bool":
            return "1/true/yes/on or 0/false/no/off"
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}"
        if self.kind == "list" and self.name == USERS:
            return "comma-separated name:password pairs, each with a name and a password"
        if self.kind == "list":
            return "a comma-separated list"
        if self.kind == "str":
            return "any text"
        what = "a whole number" if self.kind == "int" else "a number"
        if self.most is not None:
            return f"{what} from {self.least:g} to {self.most:g}"
        return f"{what} {'above' if self.above else 'from'} {self.least:g}{'' if self.above else ' up'}"

    def shown_default(self) -> str:
        if self.default_text:
            return self.default_text
        if self.kind == "bool":
            return "on" if self.default else "off"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)


USERS = "PHI3LORA_USERS"


def _limit(name: str, default: int, meaning: str) -> Setting:
    return Setting(name, "int", default, meaning, "limits", least=1)


SETTINGS: tuple[Setting, ...] = (
    # --- sign-in and roles (policy/access.py, app.py)
    Setting("PHI3LORA_REQUIRE_LOGIN", "bool", None, "sign-in and roles: training and the runs need an allowed, "
            "signed-in user", "sign-in", default_text="on in a Hugging Face Space ($SPACE_ID set), else off"),
    Setting(USERS, "list", None, "`name:password,...`: Gradio's password login before the page opens", "sign-in",
            default_text="no password", secret=True),
    Setting("PHI3LORA_OWNER", "str", None, "the user who sees and touches every run", "sign-in",
            default_text="the Space's author ($SPACE_AUTHOR_NAME)"),
    Setting("PHI3LORA_ALLOWED_USERS", "list", None, "users or organisations who may train (comma separated)",
            "sign-in", default_text="the owner"),
    Setting("PHI3LORA_PUBLIC_CHAT", "choice", "off", "`published`: visitors who may not train may chat with the "
            "adapters the owner published", "sign-in", choices=("off", "published")),
    # --- models (policy/allowed_models.py, modeling.py)
    Setting("PHI3LORA_BASE_MODEL", "str", None, "the base model when none is named (a hub id, a folder or `demo`)",
            "models", default_text="microsoft/Phi-3-mini-4k-instruct on a CUDA GPU, else the demo model"),
    Setting("PHI3LORA_ALLOWED_BASE_MODELS", "list", None, "base models an adapter, a dataset or a visitor of a "
            "shared server may name (comma separated hub ids or folders)", "models",
            default_text="Phi-3-mini-4k/128k, Phi-3.5-mini, Phi-3-medium-4k/128k, `demo` and $PHI3LORA_BASE_MODEL"),
    Setting("PHI3LORA_ALLOW_REMOTE_CODE", "bool", False, "let a model run Python code from its repository "
            "(`trust_remote_code`); nothing a user sends can turn it on", "models"),
    # --- limits (policy/limits.py)
    Setting("PHI3LORA_MAX_UPLOAD_MB", "float", 100.0, "upload size, enforced while the file streams", "limits",
            least=0, above=True),
    _limit("PHI3LORA_MAX_RECORDS", 200_000, "records in a dataset file (reading stops past it)"),
    _limit("PHI3LORA_MAX_SEQ_LENGTH", 8192, "`training_config.max_length`"),
    _limit("PHI3LORA_MAX_QUEUED_PER_USER", 3, "queued and running runs per user"),
    _limit("PHI3LORA_CHAT_CONCURRENCY", 4, "chats generating at once (one Gradio queue)"),
    _limit("PHI3LORA_MAX_NEW_TOKENS", 512, "tokens in one answer"),
    Setting("PHI3LORA_MAX_PROMPT_TOKENS", "int", None, "tokens of one chat conversation (system prompt, history "
            "and prompt): one model thread serves every chat, and a prefill's time grows with the square of its "
            "length", "limits", least=1,
            default_text="the model's context less the answer's max new tokens, at most 4096"),
    _limit("PHI3LORA_MAX_STEPS", 100_000, "`training_config.max_steps`"),
    _limit("PHI3LORA_MAX_EPOCHS", 100, "`training_config.num_train_epochs`"),
    _limit("PHI3LORA_MAX_ADAPTER_MB", 2048, "what an uploaded adapter zip may unpack to. Where the base's shape is "
           "known (the demo, the Phi-3 family, a local folder) the cap is the exact size of a LoRA adapter of that "
           "rank and those modules in fp32; the zip's own size fields are never trusted: extraction is streamed "
           "and counted"),
    _limit("PHI3LORA_ADAPTER_QUOTA_MB", 4096, "uploaded adapters one user keeps at once"),
    _limit("PHI3LORA_ADAPTER_HOURS", 24, "how long an uploaded adapter is kept"),
    _limit("PHI3LORA_CACHE_MAX_MB", 1024, "total of Gradio's upload cache (anyone can post files to it); the "
           "oldest files go first"),
    _limit("PHI3LORA_CACHE_SECONDS", 3600, "lifetime of a file in Gradio's upload cache (Gradio's `delete_cache`)"),
    _limit("PHI3LORA_DOWNLOAD_SECONDS", 3600, "lifetime of a download link (adapter zip, evaluation CSV); links "
           "are served by the app's own route, never from Gradio's cache, and on a shared server only to a "
           "visitor who may see the run"),
    Setting("PHI3LORA_CHAT_MEMORY_GB", "float", None, "memory the chat model may take (the GPU-memory guard)",
            "limits", least=0, above=True, default_text="what is free"),
    Setting("PHI3LORA_GPU_MEMORY_GB", "float", None, "simulate a GPU of this size for the GPU-memory owner "
            "(tasks/gpu_memory.py): free is this less what its holders reserve; for tests and CPU machines",
            "limits", least=0, above=True, default_text="the real GPU's (torch.cuda.mem_get_info)"),
    Setting("PHI3LORA_MEMORY_GB", "float", None, "memory a training run may take on its device: a run whose "
            "estimate (training/memory_estimate.py) is larger is refused before it starts, naming the setting that "
            "would make it fit", "limits", least=0, above=True,
            default_text="what is free: the GPU's free memory, or RAM's MemAvailable on a CPU"),
    # --- background runs (runs/registry.py, runs/lifecycle.py)
    Setting("PHI3LORA_HOME", "str", "./phi3lora_home", "the data root: runs, uploads and downloads (a storage "
            "bucket's mount on a Space)", "runs"),
    Setting("PHI3LORA_MAX_RUNS", "int", 1, "training runs at once per GPU set", "runs", least=1),
    Setting("PHI3LORA_CANCEL_GRACE", "float", 60.0, "seconds a cancelled trainer has to stop before its process "
            "group is killed", "runs", least=0),
    Setting("PHI3LORA_TRAINER_NICE", "int", 10, "how far a CPU trainer lowers its priority, so the app stays quick "
            "(0 keeps it; GPU trainers keep theirs)", "runs", least=0, most=19),
    # --- the Compare tab: chat and evaluation (inference/service.py, inference/evaluation.py)
    Setting("PHI3LORA_CHAT_IDLE_MINUTES", "float", 15.0, "idle minutes after which the chat model is released",
            "compare", least=0, above=True),
    Setting("PHI3LORA_EVAL_INLINE_MAX", "int", 64, "eval conversations up to which an evaluation runs while the "
            "page waits; larger splits go to a background process", "compare", least=0),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


# --- reading ----------------------------------------------------------------------------------------------

def raw(name: str) -> str:
    """The variable's text, stripped; "" when unset or blank."""
    return os.environ.get(_declared(name).name, "").strip()


def is_set(name: str) -> bool:
    return bool(raw(name))


def get(name: str) -> Any:
    """The variable's parsed value, or its default (None where the default is computed by the caller)."""
    setting = _declared(name)
    text = raw(name)
    return _parse(setting, text) if text else setting.default


def get_int(name: str) -> int | None:
    return _typed(name, "int")


def get_float(name: str) -> float | None:
    return _typed(name, "float")


def get_bool(name: str) -> bool | None:
    return _typed(name, "bool")


def get_str(name: str) -> str | None:
    return _typed(name, "str", "choice")


def get_list(name: str) -> list[str]:
    return _typed(name, "list") or []


def check_all() -> None:
    """Refuse every set variable whose value it does not allow, in one SettingsError of one line."""
    problems = []
    for setting in SETTINGS:
        try:
            get(setting.name)
        except SettingsError as error:
            problems.append(str(error))
    if problems:
        raise SettingsError("; ".join(problems))


def check_value(name: str, text: str) -> None:
    """Refuse `text` as the value of a PHI3LORA_* variable, or a PHI3LORA_* name nothing reads (a typo): for values
    set elsewhere than this process's environment, e.g. a Space's variables."""
    if name.startswith("PHI3LORA_") and name not in BY_NAME:
        raise SettingsError(f"{name} is not a variable phi3lora reads (README: Environment variables)")
    if name in BY_NAME and text.strip():
        _parse(BY_NAME[name], text.strip())


# --- the variables whose defaults or shapes need more than a type ---------------------------------------------

def data_root() -> Path:
    """$PHI3LORA_HOME resolved: where runs, uploads and downloads live."""
    return Path(get_str("PHI3LORA_HOME")).resolve()


def on_space() -> bool:
    """Running in a Hugging Face Space (which sets $SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID", "").strip())


def login_required() -> bool:
    required = get_bool("PHI3LORA_REQUIRE_LOGIN")
    return on_space() if required is None else required


def owner() -> str | None:
    return get_str("PHI3LORA_OWNER") or os.environ.get("SPACE_AUTHOR_NAME") or None


def password_logins() -> list[tuple[str, str]] | None:
    """$PHI3LORA_USERS as Gradio's auth list, or None for no password."""
    pairs = [entry.split(":", 1) for entry in get_list(USERS)]
    return [(name.strip(), password) for name, password in pairs] or None


# --- README --------------------------------------------------------------------------------------------------

def markdown_table() -> str:
    """README's table of every variable, in declaration order."""
    rows = ["| variable | for | meaning | allowed | default |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| `{s.name}` | {s.group} | {s.meaning} | {s.allowed()} | {s.shown_default()} |" for s in SETTINGS]
    return "\n".join(rows)


# --- parsing -------------------------------------------------------------------------------------------------

def _declared(name: str) -> Setting:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"{name} is not declared in phi3lora/settings.py") from None


def _typed(name: str, *kinds: str) -> Any:
    kind = _declared(name).kind
    if kind not in kinds:
        raise TypeError(f"{name} is a {kind} setting, not {' or '.join(kinds)}")
    return get(name)


def _parse(setting: Setting, text: str) -> Any:
    value = PARSERS[setting.kind](setting, text)
    if value is None:
        raise SettingsError(f"{setting.name}={_shown(setting, text)}: {setting.allowed()}")
    return value


def _shown(setting: Setting, text: str) -> str:
    if setting.secret:
        return "(hidden)"
    shown = text if text.isprintable() else repr(text)
    return shown if len(shown) <= SHOWN_VALUE_CHARS else shown[:SHOWN_VALUE_CHARS - 3] + "..."


def _in_range(setting: Setting, value: float) -> bool:
    low_ok = setting.least is None or (value > setting.least if setting.above else value >= setting.least)
    return low_ok and (setting.most is None or value <= setting.most)


def _parse_int(setting: Setting, text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if _in_range(setting, value) else None


def _parse_float(setting: Setting, text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    # nan and inf pass float() but are no amount of anything
    return value if value == value and abs(value) != float("inf") and _in_range(setting, value) else None


def _parse_bool(setting: Setting, text: str) -> bool | None:
    word = text.lower()
    return True if word in TRUE else False if word in FALSE else None


def _parse_choice(setting: Setting, text: str) -> str | None:
    word = text.lower()
    return word if word in setting.choices else None


def _parse_list(setting: Setting, text: str) -> list[str] | None:
    if setting.name == USERS:  # passwords keep their spaces; an entry without a name or a password is refused
        entries = [entry for entry in text.split(",") if entry.strip()]
        pairs = [entry.split(":", 1) for entry in entries]
        return entries if all(len(p) == 2 and p[0].strip() and p[1] for p in pairs) else None
    return list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))


PARSERS = {"int": _parse_int, "float": _parse_float, "bool": _parse_bool, "str": lambda setting, text: text,
           "choice": _parse_choice, "list": _parse_list}


if __name__ == "__main__":
    print(markdown_table())
