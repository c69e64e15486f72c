"""A base model's tokenizer, loaded without torch, so that what needs only a tokenizer (`validate`, token counts)
starts in a second or two instead of ten.

transformers' AutoTokenizer imports torch (it reads the model's configuration through classes that do). Where
AutoTokenizer would build the generic `TokenizersBackend` from tokenizer.json (as it does for every Phi-3 model and
for tokenizers saved as TokenizersBackend), this module builds that very class itself, with no torch: the same class
from the same files, so the same token ids. Anything else (another tokenizer class, a tokenizer with code of its own)
goes through AutoTokenizer as before.

`load_counting_tokenizer` goes further for token counts alone (validate): where it is exact, plain_tokenizer.py
counts without transformers at all.

`quiet_transformers()` silences transformers' log and Python warnings while a command that prints its own report
(validate) runs: a counted conversation longer than the tokenizer's model_max_length is a finding of the report,
not a warning on stderr.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

from .base_model import ModelLoadError, model_file

TOKENIZERS_BACKEND = "TokenizersBackend"
# Model types whose tokenizer AutoTokenizer builds as TokenizersBackend whatever class tokenizer_config.json names
# (transformers lists Phi-3 among the models whose hub repositories name the wrong class).
GENERIC_TOKENIZER_MODEL_TYPES = frozenset({"phi3"})


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer of a base model (hub id or folder), padded with unk rather than eos (see _pad_with_unk)."""
    try:
        if not trust_remote_code and _builds_generic_backend(name_or_path):
            from transformers.tokenization_utils_tokenizers import TokenizersBackend

            _silence_if_quiet()
            tokenizer = TokenizersBackend.from_pretrained(name_or_path, _from_auto=True)
        else:
            from transformers import AutoTokenizer

            _silence_if_quiet()
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load the tokenizer of {name_or_path!r}: {_first_line(error)}") from None
    return _pad_with_unk(tokenizer)


def _pad_with_unk(tokenizer):
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # Phi-3 pads with its eos. Padding is masked out of the loss, so the model would never learn to stop:
        # pad with unk instead, as the Phi-3 model card's sample_finetune.py does.
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _builds_generic_backend(name_or_path: str) -> bool:
    """Whether AutoTokenizer would build TokenizersBackend from these files: a tokenizer.json, no tokenizer code of
    its own (auto_map), and tokenizer_config.json naming TokenizersBackend, or a Phi-3 model's config.json."""
    tokenizer_config = model_file(name_or_path, "tokenizer_config.json")
    if not tokenizer_config or "auto_map" in tokenizer_config or not tokenizer_config.get("tokenizer_class"):
        return False
    if model_file(name_or_path, "tokenizer.json", parse=False) is None:
        return False
    if tokenizer_config["tokenizer_class"] == TOKENIZERS_BACKEND:
        return True
    return (model_file(name_or_path, "config.json") or {}).get("model_type") in GENERIC_TOKENIZER_MODEL_TYPES


_quiet_blocks = 0  # open quiet_transformers blocks
_verbosity_before: int | None = None  # transformers' log level before a block silenced it


@contextlib.contextmanager
def quiet_transformers():
    """transformers logs only errors, and no Python warning is shown, inside the block; as before after it. Nothing
    is imported for it: transformers is silenced where it is, or as soon as load_tokenizer imports it."""
    global _quiet_blocks, _verbosity_before
    _quiet_blocks += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _silence_if_quiet()
            yield
    finally:
        _quiet_blocks -= 1
        if not _quiet_blocks and _verbosity_before is not None:
            from transformers.utils import logging as transformers_logging

            transformers_logging.set_verbosity(_verbosity_before)
            _verbosity_before = None


def _silence_if_quiet() -> None:
    global _verbosity_before
    if _quiet_blocks and _verbosity_before is None and "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        _verbosity_before = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_counting_tokenizer(name_or_path: str):
    """For token counts only (validate): plain_tokenizer.PlainTokenizer where it is exact for this folder (no
    transformers to import: a second sooner), else load_tokenizer."""
    if Path(name_or_path).is_dir() and _builds_generic_backend(name_or_path):
        from .plain_tokenizer import plain_tokenizer

        plain = plain_tokenizer(name_or_path)
        if plain is not None:
            return plain
    return load_tokenizer(name_or_path)
