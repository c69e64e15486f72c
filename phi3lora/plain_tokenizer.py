"""A tokenizer for counting tokens only, without transformers: the `tokenizers` library reading tokenizer.json and
jinja2 rendering the chat template, for `validate` (importing transformers alone takes about two seconds here).

It is used only where it gives exactly what transformers' TokenizersBackend gives, and `plain_tokenizer(folder)`
says None otherwise (the caller then loads the tokenizer through transformers). Exactly, because:
- the folder is one AutoTokenizer builds as TokenizersBackend from tokenizer.json (tokenizer_loading.py), and every
  token its tokenizer_config.json names (special tokens, added_tokens_decoder) is already in tokenizer.json, with
  the same id and flags, so transformers adds or changes none; split_special_tokens is off;
- the chat template is one string and uses only `messages`, `add_generation_prompt`, the special tokens and
  `raise_exception`, no `tojson` (transformers replaces jinja's) and no `{% generation %}`: it is rendered in the
  environment transformers renders in (sandboxed, trim_blocks, lstrip_blocks, loop controls).
tests/test_cli_validate.py compares it with transformers' on the demo and the real Phi-3 tokenizers.
"""
from __future__ import annotations

import json
from pathlib import Path

SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
TEMPLATE_NAMES = frozenset({"messages", "add_generation_prompt", "raise_exception", *SPECIAL_NAMES})
ADDED_TOKEN_FLAGS = ("content", "lstrip", "rstrip", "normalized", "single_word", "special")


class PlainTokenizer:
    """The part of a transformers tokenizer that token counting uses: apply_chat_template(tokenize=False), calling
    it on a batch of texts (input_ids, offset_mapping), and the special tokens' texts."""

    def __init__(self, backend, chat_template: str, special: dict[str, str | None]):
        self._backend = backend
        self.chat_template = chat_template
        self.bos_token, self.eos_token, self.unk_token, self.pad_token = (special.get(n) for n in SPECIAL_NAMES)
        self._template = _environment().from_string(chat_template)
        self._special = special

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False) -> str:
        if tokenize:
            raise ValueError("a PlainTokenizer renders text only")
        # as transformers: keys whose value is None dropped, special tokens passed by name
        messages = [{key: value for key, value in message.items() if value is not None} for message in messages]
        return self._template.render(messages=messages, add_generation_prompt=False, **self._special)

    def __call__(self, texts: list[str], add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict:
        encodings = self._backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        result = {"input_ids": [encoding.ids for encoding in encodings]}
        if return_offsets_mapping:
            result["offset_mapping"] = [encoding.offsets for encoding in encodings]
        return result


def plain_tokenizer(folder: str) -> PlainTokenizer | None:
    """The folder's tokenizer without transformers, where that is exact (see the module's docstring); else None."""
    root = Path(folder)
    try:
        settings = json.loads((root / "tokenizer_config.json").read_text(encoding="utf-8"))
        serialized = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))
        template = _template_text(root, settings)
    except (OSError, ValueError):
        return None
    special = _special_tokens(settings)
    if (template is None or special is None or settings.get("split_special_tokens")
            or not _tokens_already_there(settings, special, serialized) or not _plain_template(template)):
        return None
    import tokenizers

    backend = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    backend.no_truncation()
    backend.no_padding()
    if special["pad_token"] is None or special["pad_token"] == special["eos_token"]:
        special["pad_token"] = special["unk_token"]  # as tokenizer_loading._pad_with_unk
    return PlainTokenizer(backend, template, special)


def _template_text(root: Path, settings: dict) -> str | None:
    in_settings = settings.get("chat_template")
    in_file = root / "chat_template.jinja"
    if in_file.is_file():
        return None if in_settings is not None else in_file.read_text(encoding="utf-8")  # both: which wins is theirs
    return in_settings if isinstance(in_settings, str) else None


def _special_tokens(settings: dict) -> dict[str, str | None] | None:
    special = {}
    for name in SPECIAL_NAMES:
        value = settings.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None and not isinstance(value, str):
            return None
        special[name] = value
    return special


def _tokens_already_there(settings: dict, special: dict[str, str | None], serialized: dict) -> bool:
    added = {token["id"]: token for token in serialized.get("added_tokens") or []}
    by_content = {token["content"]: token for token in added.values()}
    for key, token in (settings.get("added_tokens_decoder") or {}).items():
        there = added.get(int(key))
        if there is None or any(token.get(flag, there.get(flag)) != there.get(flag) for flag in ADDED_TOKEN_FLAGS):
            return False
    named = [value for value in special.values() if value is not None]
    for key in ("extra_special_tokens", "additional_special_tokens"):
        listed = settings.get(key) or []
        if not isinstance(listed, list):
            return False
        named += [token.get("content") if isinstance(token, dict) else token for token in listed]
    return all(isinstance(token, str) and by_content.get(token, {}).get("special") for token in named)


def _plain_template(template: str) -> bool:
    import jinja2
    from jinja2 import meta, nodes

    try:
        tree = _environment().parse(template)
    except jinja2.TemplateError:  # {% generation %}, or not a template
        return False
    uses_tojson = any(node.name == "tojson" for node in tree.find_all(nodes.Filter))
    return not uses_tojson and meta.find_undeclared_variables(tree) <= TEMPLATE_NAMES


def _environment():
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=["jinja2.ext.loopcontrols"])
    environment.globals["raise_exception"] = raise_exception
    return environment
