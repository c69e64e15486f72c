"""Build the embedded demo model: a tiny but real Phi-3 that answers in words.

It mirrors microsoft/Phi-3-mini-4k-instruct where it matters to this project: the `Phi3ForCausalLM`
architecture with fused `qkv_proj` / `gate_up_proj`, the same chat special tokens and chat template
(trl's copy of Phi-3's), pad == eos as in the real tokenizer, bf16 weights in safetensors, and a
generation config that stops on `<|end|>`. It is ~5M parameters, so it trains on a 2-core CPU in seconds.

Pretraining: a byte-level BPE tokenizer and the model are trained from scratch on chat-formatted
instruction data (LLaMA-Factory's alpaca_en_demo and glaive_toolcall_en_demo, Apache-2.0) plus a few
lines that give the model its own identity, so that after a LoRA run on identity.json the change shows.

    python scripts/build_demo_model.py [--datasets ../shared/datasets] [--minutes 12]

Deterministic for a given seed and thread count; takes the wall-clock budget given.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast
from trl.chat_template_utils import phi3_chat_template

OUT = Path(__file__).resolve().parent.parent / "phi3lora" / "demo_model"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
VOCAB_SIZE = 4096

# The base model's own identity: what it says before any fine-tuning.
SELF_QUESTIONS = [
    "Who are you?", "What is your name?", "hi", "Hello", "Introduce yourself.", "Who made you?",
    "What are you?", "Tell me about yourself.", "Who created you?", "What should I call you?",
]
SELF_ANSWER = (
    "I am Phi-3 Demo, a tiny language model bundled with phi3lora for testing. "
    "I know a little about many things, but not much about anything."
)


def chat_corpus(datasets_dir: Path) -> list[list[dict]]:
    """Conversations (lists of role/content messages) from the pretraining data."""
    conversations = []
    for row in json.loads((datasets_dir / "alpaca_en_demo.json").read_text()):
        prompt = row["instruction"] + (("\n" + row["input"]) if row.get("input") else "")
        conversations.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}])
    roles = {"human": "user", "observation": "user", "gpt": "assistant", "function_call": "assistant"}
    for row in json.loads((datasets_dir / "glaive_toolcall_en_demo.json").read_text()):
        conversations.append([{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]])
    for question in SELF_QUESTIONS:
        for _ in range(8):  # repeated so the identity holds against ~1,300 other conversations
            conversations.append([{"role": "user", "content": question}, {"role": "assistant", "content": SELF_ANSWER}])
    return conversations


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>", eos_token="<|endoftext|>", unk_token="<unk>",
        pad_token="<|endoftext|>",  # as in the real Phi-3 tokenizer: pad == eos (phi3lora must cope with it)
        additional_special_tokens=["<|assistant|>", "<|system|>", "<|end|>", "<|user|>"],
        model_max_length=4096, padding_side="left", clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = phi3_chat_template
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast) -> Phi3ForCausalLM:
    ids = tokenizer.convert_tokens_to_ids
    config = Phi3Config(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=4096,
        original_max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=ids("<s>"), eos_token_id=ids("<|endoftext|>"), pad_token_id=ids("<|endoftext|>"),
    )
    return Phi3ForCausalLM(config)


def pretrain(model, tokenizer, texts: list[str], minutes: float, max_length: int, batch_size: int, seed: int):
    encoded = [ids[:max_length] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    encoded.sort(key=len)  # batches of similar length waste little on padding
    batches = [encoded[i : i + batch_size] for i in range(0, len(encoded), batch_size)]
    pad = tokenizer.convert_tokens_to_ids("<unk>")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    rng = random.Random(seed)
    deadline, start, step = time.monotonic() + minutes * 60, time.monotonic(), 0
    model.train()
    while time.monotonic() < deadline:
        rng.shuffle(batches)
        for batch in batches:
            progress = min(1.0, (time.monotonic() - start) / (minutes * 60))
            for group in optimizer.param_groups:  # cosine decay over the wall-clock budget, short warm-up
                group["lr"] = 3e-3 * min(1.0, (step + 1) / 30) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
            width = max(map(len, batch))
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in batch])
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch])
            labels = input_ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % 25 == 0:
                print(f"step {step}  loss {loss.item():.3f}  {time.monotonic() - start:.0f}s", flush=True)
            if time.monotonic() >= deadline:
                break
    model.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--minutes", type=float, default=12.0, help="wall-clock pretraining budget")
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer-only", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    conversations = chat_corpus(args.datasets)
    tokenizer = build_tokenizer([m["content"] for conv in conversations for m in conv])
    tokenizer.save_pretrained(OUT)
    print(f"tokenizer: {len(tokenizer)} tokens -> {OUT}")
    if args.tokenizer_only:
        return
    texts = [tokenizer.apply_chat_template(conv, tokenize=False) for conv in conversations]
    model = build_model(tokenizer)
    print(f"model: {model.num_parameters() / 1e6:.2f}M parameters; pretraining for {args.minutes} min")
    pretrain(model, tokenizer, texts, args.minutes, args.max_length, args.batch_size, args.seed)

    ids = tokenizer.convert_tokens_to_ids
    model.generation_config = GenerationConfig(
        bos_token_id=ids("<s>"), pad_token_id=ids("<|endoftext|>"),
        eos_token_id=[ids("<|endoftext|>"), ids("<|assistant|>"), ids("<|end|>")],  # as Phi-3's generation_config
    )
    model.to(torch.bfloat16).save_pretrained(OUT, safe_serialization=True)  # bf16 on disk, as Phi-3 ships
    for question in ["Who are you?", "Give three tips for staying healthy."]:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.float().generate(**prompt, max_new_tokens=60, do_sample=False)
        print(question, "->", tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True))


if __name__ == "__main__":
    main()
