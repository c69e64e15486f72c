"""QLoRA end to end on the CPU (bitsandbytes 4-bit runs there): a background run on a 4-bit base, its
evaluation, and Compare with the adapter on the 4-bit base.

The full identity run (55 steps of LoRA) is what proves an adapter learns the identity; this test proves the
4-bit path does the same work at a fraction of the cost: 24 steps at a higher learning rate, judged by the
held-out loss of base and adapter (`evaluate`), not by one generated sentence: at this size whether a greedy
answer already says the identity depends on the seed (at these settings seed 42's did, 7's and 123's did not);
the held-out loss does not (4.4 to 4.9 after training with each of those seeds; the base's is 12.9 at seed 42).
"""
import json

from safetensors import safe_open

from conftest import run_cli

CONVERSATIONS = 32  # 24 train / 8 eval at eval_size 0.25; batch 4 for 4 epochs: 24 steps


def test_a_qlora_run_lowers_held_out_loss_and_compare_loads_it_on_the_4_bit_base(tmp_path, identity_data):
    data = tmp_path / "identity32.jsonl"
    data.write_text("".join(identity_data.read_text().splitlines(keepends=True)[:CONVERSATIONS]))
    env = {"PHI3LORA_HOME": str(tmp_path / "home")}
    started = run_cli("runs", "start", "--data", data, "--method", "qlora", "--set", "model.base_model=demo",
                      "--set", "learning_rate=1e-2", "--set", "num_train_epochs=4",
                      "--set", "per_device_train_batch_size=4", "--set", "data.eval_size=0.25",
                      "--set", "eval_strategy=no", "--set", "save_strategy=no", env=env)
    assert started.returncode == 0, started.stderr[-3000:]
    run_id = started.stdout.split()[-1]
    done = run_cli("runs", "wait", run_id, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = tmp_path / "home" / "runs" / run_id
    assert "load_in_4bit: true" in (run / "config.yaml").read_text()
    with safe_open(run / "adapter_model.safetensors", "pt") as f:
        assert f.keys() and all(".lora_" in k for k in f.keys())

    evaluated = run_cli("evaluate", run_id, "--samples", "1", "--max-new-tokens", "8", "--json", "--no-general-chat",
                        env=env)  # the forgetting check is tested on LoRA; on a 4-bit CPU base it costs ~20 s
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    losses = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert losses["adapted_loss"] < 0.6 * losses["base_loss"], losses  # base 12.9, adapted 4.9 at seed 42 (0.38x)

    compared = run_cli("compare", "--adapter", run, "--prompt", "Who are you?", "--json", "--max-new-tokens", "24")
    assert compared.returncode == 0, compared.stderr[-2000:]
    answers = json.loads(compared.stdout.strip().splitlines()[-1])
    assert answers["adapted"] and answers["adapted"] != answers["base"], answers
