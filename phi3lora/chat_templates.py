"""Phi-3 family chat templates for assistant-only loss: which template marks the assistant's turns.

Assistant-only loss needs a template with `{% generation %}` marks around the assistant's words. A tokenizer's own
template may have them; trl has training variants of the templates it knows by their exact text (Phi-3-mini-4k's
July 2024 update, Phi-3.5); for the other templates of the Phi-3 family (the first Phi-3-mini release and
Phi-3-medium have no system role and end each user turn with `<|assistant|>`, some put `<s>` first) this module
writes its own variant, for the shape read from what the model's template renders (not from its text), and uses it
only where it renders exactly what the original does. The trainer and the evaluation both take theirs from here.

Templates without a system role drop system messages; phi3lora.data.template puts their text into the first user
message before a template sees them.
"""
from __future__ import annotations

from dataclasses import dataclass

# The Phi-3 family's turn markers; every turn's text ends with END.
SYSTEM, USER, ASSISTANT, END = "<|system|>\n", "<|user|>\n", "<|assistant|>\n", "<|end|>\n"
_PROBE = [  # texts no template adds of its own accord
    {"role": "system", "content": "probe system"}, {"role": "user", "content": "probe question one"},
    {"role": "assistant", "content": "probe answer one"}, {"role": "user", "content": "probe question two"},
    {"role": "assistant", "content": "probe answer two"},
]


def marked_template(tokenizer) -> str | None:
    """A chat template that renders as the tokenizer's own and marks the assistant turns: its own where it has the
    marks, else trl's training variant of it, else ours for a Phi-3 family template; None when there is none."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template or ""
    if has_generation_markers(template):
        return template
    try:
        return get_training_chat_template(tokenizer) or template
    except ValueError:  # not a template trl knows by its exact text
        return phi3_training_template(tokenizer)


@dataclass(frozen=True)
class Phi3Shape:
    bos: bool  # renders bos_token first
    system_role: bool  # renders a system turn (else drops system messages)
    eos: bool  # ends a finished conversation with eos_token


def phi3_shape(tokenizer) -> Phi3Shape | None:
    """The Phi-3 family shape the tokenizer's template renders, read from a probe conversation; None for another.
    With a system role, an assistant turn opens with its own marker; without, the user turn ends with it."""
    try:
        text = tokenizer.apply_chat_template(_PROBE, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render the probe is no Phi-3 template
        return None
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    starts_with_bos = bool(bos) and text.startswith(bos)
    text = text[len(bos):] if starts_with_bos else text
    ends_with_eos = bool(eos) and text.endswith(eos)
    text = text[:-len(eos)] if ends_with_eos else text
    for system_role in (True, False):
        if text == _rendered(system_role):
            return Phi3Shape(starts_with_bos, system_role, ends_with_eos)
    return None


def _rendered(system_role: bool) -> str:
    """The probe as a Phi-3 template of that shape renders it, between any bos and eos."""
    text = ""
    for message in _PROBE:
        role, content = message["role"], message["content"]
        if role == "system" and system_role:
            text += SYSTEM + content + END
        elif role == "user":
            text += USER + content + END + ("" if system_role else ASSISTANT)
        elif role == "assistant":
            text += (ASSISTANT if system_role else "") + content + END
    return text


def phi3_training_template(tokenizer) -> str | None:
    """Our training template for the tokenizer's Phi-3 family template: the same text, with the assistant's words
    and their end marks (and a final eos) inside `{% generation %}`. None unless it renders exactly as the original."""
    shape = phi3_shape(tokenizer)
    if shape is None:
        return None
    ours = write_training_template(shape)
    for prompt in (False, True):
        probe = _PROBE if not prompt else _PROBE[:2]
        original = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=prompt)
        if tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=prompt, chat_template=ours) != original:
            return None
    return ours


def write_training_template(shape: Phi3Shape) -> str:
    """A Phi-3 chat template of `shape` with `{% generation %}` marks; system messages are dropped where the shape
    has no system role (data.template puts their text into the first user message first)."""
    def text(value: str) -> str:  # a Jinja string literal
        return "'" + value.replace("\n", "\\n") + "'"

    # the branch that tests for a user message: after a system branch where the shape has a system role
    user_branch = (f"{{%- if message['role'] == 'system' %}}{{{{- {text(SYSTEM)} + message['content'] + {text(END)} }}}}"
                   "{%- elif" if shape.system_role else "{%- if")
    user_end = text(END) if shape.system_role else text(END + ASSISTANT)
    opening = f"{{{{- {text(ASSISTANT)} }}}}" if shape.system_role else ""
    prompt = f"{{{{- {text(ASSISTANT)} }}}}" if shape.system_role else ""  # system-less: the user turn opened it
    ending = ("{%- elif messages[-1]['role'] == 'assistant' %}{%- generation %}{{- eos_token }}{%- endgeneration %}"
              "{%- else %}{{- eos_token }}") if shape.eos else ""
    return (
        "{#- phi3lora's training variant of a Phi-3 chat template: the assistant's words inside generation marks -#}"
        + ("{{- bos_token }}" if shape.bos else "")
        + "{%- for message in messages %}"
        + user_branch + f" message['role'] == 'user' %}}{{{{- {text(USER)} + message['content'] + {user_end} }}}}"
        + f"{{%- elif message['role'] == 'assistant' %}}{opening}"
        + f"{{%- generation %}}{{{{- message['content'] + {text(END)} }}}}{{%- endgeneration %}}"
        + "{%- endif %}{%- endfor %}"
        + (f"{{%- if add_generation_prompt %}}{prompt}{ending}{{%- endif %}}" if prompt or ending else "")
    )
