"""What validate says training cuts agrees with trl's own assistant mask, token for token where the answers start."""
import importlib.util
from pathlib import Path

from conftest import DEMO_MODEL
from phi3lora import data
from phi3lora.data.truncation import cuts
from phi3lora.tokenizer_loading import load_tokenizer

MAX_LENGTH = 64
WORDS = " ".join(f"w{i}" for i in range(80))


def _conversation(record: int, *turns: str, system: str | None = None) -> data.Conversation:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]
    return data.Conversation(record, messages)


def test_cuts_match_trls_assistant_mask_after_keep_start_truncation():
    tokenizer = load_tokenizer(str(DEMO_MODEL))
    conversations = [
        _conversation(1, "What is the weather?", '{"name": "get_weather"}', system="Tools: " + WORDS),
        _conversation(2, "Hi", "Hello", "And then? " + WORDS, "Lost."),
        _conversation(3, "Tell me.", "All of it: " + WORDS),
        _ending_past_the_cut(tokenizer, 4),
        _conversation(5, "Hi", "Hello"),
    ]
    lengths = data.token_lengths(tokenizer, conversations)
    closing = len(tokenizer("<|end|>\n" + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
    found = {cut.record: cut for cut in cuts(tokenizer, conversations, lengths, MAX_LENGTH)}
    template = _trl_training_template()
    for conversation in conversations:
        rendered = tokenizer.apply_chat_template(conversation.messages, chat_template=template, tokenize=True,
                                                 return_dict=True, return_assistant_tokens_mask=True)
        mask = rendered["assistant_masks"]
        assert len(mask) == lengths[conversation.record - 1]
        if len(mask) <= MAX_LENGTH:
            assert conversation.record not in found
            continue
        cut = found[conversation.record]
        assert cut.answer_starts_at == mask.index(1)
        kept = mask[:MAX_LENGTH]  # trl's truncation_mode keep_start
        last_start = max(i for i, bit in enumerate(mask) if bit and (i == 0 or not mask[i - 1]))
        last_end = max(i for i, bit in enumerate(mask) if bit) + 1
        expected = ("no_answer" if not any(kept) else "last_answer_lost" if last_start >= MAX_LENGTH
                    else "last_answer_cut" if last_end - closing > MAX_LENGTH else "end_cut")
        assert cut.outcome == expected, (conversation.record, cut)
    assert {cut.outcome for cut in found.values()} == {"no_answer", "last_answer_lost", "last_answer_cut", "end_cut"}


def _ending_past_the_cut(tokenizer, record: int) -> data.Conversation:
    """A conversation whose answer ends within MAX_LENGTH tokens and whose closing tokens do not."""
    for words in range(1, 80):
        conversation = _conversation(record, "Q " + " ".join(f"x{i}" for i in range(words)), "A short answer")
        if MAX_LENGTH < data.token_lengths(tokenizer, [conversation])[0] <= MAX_LENGTH + 2:
            return conversation
    raise AssertionError("no question length puts only the closing tokens past the cut")


def _trl_training_template() -> str:
    """trl's training variant of Phi-3's template, the one chat_templates.marked_template gives the trainer for the
    demo model, read from trl's package without importing trl (and torch with it): this test stays a second."""
    trl = Path(importlib.util.find_spec("trl").submodule_search_locations[0])
    return (trl / "chat_templates" / "phi3_training.jinja").read_text(encoding="utf-8")
