"""Chat templates of the Phi-3 family's shapes, written for these tests (not copied from a model repository), for
building test models that render as the real ones do:

    WITHOUT_SYSTEM_ROLE         Phi-3-medium's shape: no system role (system messages dropped), each user turn
                                `<|user|>\\n{content}<|end|>\\n<|assistant|>\\n`, each assistant turn `{content}<|end|>\\n`,
                                no eos at the end
    WITHOUT_SYSTEM_ROLE_BOS     the first Phi-3-mini release's shape: the same, with bos_token first

The shape with a system role is the one in ../shared/phi3-tokenizer and phi3lora/demo_model (and trl's phi3.jinja).
`use_template(folder, template)` puts a template into a model folder's tokenizer_config.json.
"""
import json
from pathlib import Path

WITHOUT_SYSTEM_ROLE = (
    "{% for turn in messages %}"
    "{% if turn.role == 'user' %}{{ '<|user|>\\n' ~ turn.content ~ '<|end|>\\n<|assistant|>\\n' }}"
    "{% elif turn.role == 'assistant' %}{{ turn.content ~ '<|end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
)
WITHOUT_SYSTEM_ROLE_BOS = "{{ bos_token }}" + WITHOUT_SYSTEM_ROLE


def use_template(folder: Path, template: str) -> None:
    """Make `template` the chat template of the tokenizer in `folder` (a separate chat_template.jinja is removed)."""
    path = Path(folder) / "tokenizer_config.json"
    values = json.loads(path.read_text(encoding="utf-8"))
    values["chat_template"] = template
    path.write_text(json.dumps(values, indent=2, ensure_ascii=False), encoding="utf-8")
    (Path(folder) / "chat_template.jinja").unlink(missing_ok=True)
