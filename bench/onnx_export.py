"""Benchmark: generation with the int4 ONNX Runtime GenAI export vs torch, on the CPU, same prompt, same length.

    python bench/onnx_export.py [--adapter DIR] [--max-new-tokens 64] [--repeats 5] [--out result.json]

Without --adapter, a 3-step adapter is trained on phi3lora/samples/identity.jsonl into a temporary folder (demo
model), as bench/side_by_side.py does. The adapter is exported (phi3lora.deploy.onnx_export: merged, then
onnxruntime-genai's builder, int4 for the CPU), then each is timed generating exactly --max-new-tokens tokens,
greedy, batch of 1, from the same prompt tokens:
  onnx_int4      onnxruntime_genai.Generator on the int4 export
  torch_adapter  torch fp32 with the adapter attached by peft: what phi3lora's chat and the export's check run
  torch_merged   torch fp32 on the merged model (no peft): the same weights as the export, in full precision
torch and onnxruntime get the same number of intra-op threads (--threads). Each is warmed up once, then all are
timed --repeats times, interleaved; medians are reported. Needs requirements-export.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from phi3lora.deploy import onnx_export, onnx_verify  # noqa: E402
from phi3lora.inference.adapters import chat_prompt  # noqa: E402
from side_by_side import CONVERSATION, timed, train_adapter  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="adapter folder (default: train 3 steps into a temp folder)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and of onnxruntime alike "
                        "(default 1: on a shared 2-core machine more threads than free cores spin, slowing torch most)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    import onnxruntime_genai as og

    n = args.max_new_tokens
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        adapter = args.adapter or train_adapter(Path(tmp) / "adapter")
        started = time.perf_counter()
        export = onnx_export.export_onnx(adapter, Path(tmp) / "onnx", "int4", "cpu", log=lambda *_: None)
        export_seconds = time.perf_counter() - started
        with_adapter, tokenizer, _ = onnx_verify._torch_model(Path(adapter))
        merged = with_adapter.merge_and_unload().eval()  # the same weights, without peft's layers
        with_adapter, _, _ = onnx_verify._torch_model(Path(adapter))
        ids = tokenizer(chat_prompt(tokenizer, CONVERSATION), add_special_tokens=False)["input_ids"]
        inputs = torch.tensor([ids])
        genai_config = json.loads((export / "genai_config.json").read_text())
        genai_config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = args.threads
        (export / "genai_config.json").write_text(json.dumps(genai_config))
        onnx_model = og.Model(str(export))

        def torch_run(model):
            @torch.inference_mode()
            def run():
                out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                     max_new_tokens=n, min_new_tokens=n, pad_token_id=tokenizer.pad_token_id)
                assert out.shape[1] - len(ids) == n
            return run

        def onnx_run():
            params = og.GeneratorParams(onnx_model)
            params.set_search_options(do_sample=False, min_length=len(ids) + n, max_length=len(ids) + n)
            generator = og.Generator(onnx_model, params)
            generator.append_tokens(np.asarray(ids, dtype=np.int32))
            steps = 0
            while not generator.is_done():
                generator.generate_next_token()
                steps += 1
            assert steps == n, steps

        runs = timed({"onnx_int4": onnx_run, "torch_adapter": torch_run(with_adapter),
                      "torch_merged": torch_run(merged)}, args.repeats)
        size_mb = sum(f.stat().st_size for f in export.iterdir()) / 1e6

    medians = {name: statistics.median(t) for name, t in runs.items()}
    result = {"threads": args.threads, "cpu_count": os.cpu_count(), "max_new_tokens": n,
              "repeats": args.repeats, "adapter": str(args.adapter or "trained 3 steps (temp)"),
              "export_seconds": round(export_seconds, 2), "export_mb": round(size_mb, 1), "times_s": runs,
              "median_s": medians, "tokens_per_second": {name: round(n / m, 1) for name, m in medians.items()}}
    print(f"\nthreads {args.threads} (torch and onnxruntime), {n} new tokens, median of {args.repeats}; "
          f"int4 export: {result['export_seconds']} s, {result['export_mb']} MB")
    for name, median in medians.items():
        print(f"{name:<16}{median:>9.3f} s{result['tokens_per_second'][name]:>9.1f} tokens/s"
              f"{medians['torch_adapter'] / median:>8.2f}x torch_adapter")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
