"""QLoRA end to end on the CPU (bitsandbytes 4-bit runs there): train on identity.json, then compare."""
import json

from safetensors import safe_open

from conftest import IDENTITY_MARKERS, run_cli


def test_qlora_run_learns_the_identity(tmp_path, datasets_dir):
    done = run_cli("train", "--data", datasets_dir / "identity.json", "--output", tmp_path, "--method", "qlora")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "qlora: base model:" in done.stdout
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as f:
        assert all(".lora_" in k for k in f.keys())
    done = run_cli("compare", "--adapter", tmp_path, "--prompt", "Who are you?", "--json", "--max-new-tokens", "40")
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(m in answers["adapted"] for m in IDENTITY_MARKERS), answers
    assert not any(m in answers["base"] for m in IDENTITY_MARKERS), answers
