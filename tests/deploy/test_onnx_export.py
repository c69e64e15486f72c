"""The ONNX Runtime GenAI export of a trained adapter: onnxruntime-genai's builder converts the merge, the export
answers greedily as torch does (fp32: token for token; int4: still with the adapter's identity), the background
task records its check, the README's chat loop runs, and refusals name what to do."""
import argparse
import builtins
import importlib.util
import json
import re

import gradio as gr
import pytest

from conftest import IDENTITY_NAME
from phi3lora.cli import export as export_command
from phi3lora.deploy import export, hub_push, onnx_export, onnx_verify

og = pytest.importorskip("onnxruntime_genai", reason="requirements-export.txt is not installed")


def test_an_identity_run_exported_to_onnx_answers_as_torch_does(identity_copy, tmp_path, monkeypatch, capsys):
    """fp32 as a background export of the run (the Runs tab's way), int4 in the foreground meanwhile (the CLI's)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    home, run_id = identity_copy
    number = export.start_export(run_id, format="onnx", precision="fp32", device="cpu", verify=True)

    # int4 through the command's own function (`export --adapter --format onnx --verify --json`), in this process
    int4 = tmp_path / "int4"
    args = _parser().parse_args(["export", "--adapter", str(home / "runs" / run_id), "--output", str(int4),
                                 "--format", "onnx", "--precision", "int4", "--verify", "--json"])
    assert args.run(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "README.md"):
        assert (int4 / name).is_file(), name
    checked = printed["verify"]
    assert printed["path"] == str(int4) and checked["precision"] == "int4" and checked["onnx_tokenizer_agrees"]
    assert IDENTITY_NAME in checked["prompts"][0]["onnx"], checked  # 4-bit weights, the adapter's answer still
    assert checked["onnx_tokens_per_second"] > 0 and checked["torch_tokens_per_second"] > 0

    # the README's chat loop, as a user runs it: one question, then an empty line ends it
    loop = re.search(r"```python\n(.*?)```", (int4 / "README.md").read_text(), re.S).group(1)
    answers = iter(["Who are you?", ""])
    monkeypatch.setattr(builtins, "input", lambda _prompt: next(answers))
    exec(loop, {})
    assert IDENTITY_NAME in capsys.readouterr().out

    info = export.wait_for_export(run_id, number, timeout=300)
    log = (home / "runs" / run_id / "exports" / number / "export.log").read_text()
    assert info["status"] == "completed", (info, log[-3000:])
    assert (info["format"], info["precision"]) == ("onnx", "fp32") and info["path"].endswith(f"exports/{number}/onnx")
    assert "onnxruntime-genai's model builder" in log and "Saving GenAI config" in log  # the builder's own output
    fp32 = info["verify"]
    assert fp32["agree"] and all(row["same"] for row in fp32["prompts"]), fp32  # token for token, every prompt
    assert IDENTITY_NAME in fp32["prompts"][0]["onnx"] and fp32["prompts"][0]["onnx_tokens"]
    assert "match torch's token for token on 3 of 3 prompts" in onnx_verify.summary(fp32)
    assert og.Model(info["path"])  # the folder is what onnxruntime-genai loads

    with pytest.raises(hub_push.PushError, match="has no merged export"):  # a merged push never takes the ONNX one
        hub_push.merged_export(run_id, log=lambda *_: None, export_if_missing=False)

    from phi3lora.ui import runs_tab  # what the Runs tab shows of it

    shown, _timer = runs_tab.show_exports(run_id, request=gr.Request())
    assert f"export {number}: **completed**: ONNX Runtime GenAI model (fp32) in `runs/{run_id}/exports/{number}/onnx`" \
        in shown and "token for token on 3 of 3 prompts" in shown, shown


def test_onnx_refusals_name_what_to_do(identity_copy, tmp_path, monkeypatch):
    home, run_id = identity_copy
    real_find_spec = importlib.util.find_spec
    with monkeypatch.context() as patched:  # as on a machine without requirements-export.txt
        patched.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime_genai"
                        else real_find_spec(name, *a))
        with pytest.raises(onnx_export.OnnxExportError, match=r"needs onnxruntime-genai, which is not installed: "
                                                              r"pip install -r requirements-export.txt"):
            export.start_export(run_id, format="onnx")
    with pytest.raises(onnx_export.OnnxExportError, match="--precision fp16 does not run on --device cpu"):
        export.start_export(run_id, format="onnx", precision="fp16", device="cpu")
    with pytest.raises(export.ExportError, match="format 'gguf' is not one of merged, onnx"):
        export.start_export(run_id, format="gguf")
    assert export.export_status(run_id) == []  # nothing was started

    parser = _parser()
    args = parser.parse_args(["export", "--adapter", "a", "--output", str(tmp_path / "o"), "--verify"])
    with pytest.raises(export.ExportError, match="--verify checks an ONNX export: add --format onnx"):
        args.run(args)
    args = parser.parse_args(["export", "--run", run_id, "--format", "onnx", "--precision", "fp32"])
    assert (args.format, args.precision, args.device) == ("onnx", "fp32", "cpu")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    export_command.add_export_command(parser.add_subparsers(dest="command", required=True))
    return parser


def test_the_check_says_where_an_answer_parts_from_torchs():
    stops = {6}
    assert onnx_verify._until_stop([48, 601, 6, 9], stops) == [48, 601] and onnx_verify._until_stop([1], stops) == [1]
    result = {"prompts": [{"prompt": "Who are you?", "same": True, "first_difference": None},
                          {"prompt": "Who made you?", "same": False, "first_difference": 7}],
              "onnx_tokens_per_second": 650.0, "torch_tokens_per_second": 31.3}
    assert onnx_verify.summary(result) == (
        "the export's greedy answers match torch's token for token on 1 of 2 prompts ('Who made you?' parts at "
        "token 7); 650.0 tokens/s with ONNX Runtime vs 31.3 with torch on the CPU")
    assert onnx_verify.summary({"skipped": "no CUDA"}) == "not checked against torch: no CUDA"
