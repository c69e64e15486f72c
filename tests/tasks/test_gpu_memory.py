"""The one owner of GPU memory (tasks/gpu_memory.py): model sizes from the model's own files, a ledger of holders
that other processes read (a dead holder blocks nobody), a chat model that lets go when a training run asks, a
start refused with the holder named, an evaluation on the chat model already in memory, and out-of-memory
sentences that name who else held the GPU. The GPU is simulated ($PHI3LORA_GPU_MEMORY_GB): no GPU here."""
import json
import struct
import subprocess
import sys
import time

import pytest

from conftest import DEMO_MODEL, REPO, run_cli
from phi3lora.data.samples import SAMPLES_DIR
from phi3lora.inference import engine, evaluation
from phi3lora.inference.service import BASE_COLUMN, ChatService
from phi3lora.job_builder import override
from phi3lora.config import JobConfig
from phi3lora.runs import lifecycle
from phi3lora.tasks import failures, gpu_memory

GB = gpu_memory.GB
PHI3_MINI = {"architectures": ["Phi3ForCausalLM"], "hidden_size": 3072, "intermediate_size": 8192,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064,
             "tie_word_embeddings": False, "torch_dtype": "bfloat16", "model_type": "phi3"}
PHI3_MINI_PARAMETERS = 3_821_079_552  # microsoft/Phi-3-mini-4k-instruct; its index's total_size is twice this
PHI3_MINI_LINEAR = 32 * 3072 * (3 * 3072 + 3072 + 3 * 8192)
WHO = [{"role": "user", "content": "Who are you?"}]


def _write(folder, name, value):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(value))


def test_sizes_come_from_the_model_files_for_any_model(tmp_path):
    shapes_only = tmp_path / "shapes"
    _write(shapes_only, "config.json", PHI3_MINI)
    assert gpu_memory.parameter_counts(str(shapes_only)) == (PHI3_MINI_PARAMETERS, PHI3_MINI_LINEAR)
    assert gpu_memory.model_bytes(str(shapes_only), "bfloat16", False) == 2 * PHI3_MINI_PARAMETERS  # 7.6 GB
    in_4bit = gpu_memory.model_bytes(str(shapes_only), "bfloat16", True)
    assert 2.1 * 1e9 < in_4bit < 2.4 * 1e9  # NF4 linears; embeddings and LM head stay in 16 bits

    indexed = tmp_path / "indexed"  # a sharded checkpoint's index says what is stored; a bigger vocabulary here
    _write(indexed, "config.json", {**PHI3_MINI, "vocab_size": 32064 + 1000})
    _write(indexed, "model.safetensors.index.json", {"metadata": {"total_size": 2 * PHI3_MINI_PARAMETERS + 2 * 6144000},
                                                     "weight_map": {}})
    assert gpu_memory.parameter_counts(str(indexed)) == (PHI3_MINI_PARAMETERS + 6144000, PHI3_MINI_LINEAR)
    assert gpu_memory.model_bytes(str(indexed), "float32", False) == 4 * (PHI3_MINI_PARAMETERS + 6144000)

    headers_only = tmp_path / "headers"  # no config: a safetensors header alone (no weights written after it)
    headers_only.mkdir()
    header = json.dumps({"__metadata__": {}, "embed": {"dtype": "BF16", "shape": [32064, 3072], "data_offsets": [0, 0]},
                         "layer": {"dtype": "BF16", "shape": [3072, 9216], "data_offsets": [0, 0]}}).encode()
    (headers_only / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    assert gpu_memory.parameter_counts(str(headers_only)) == (32064 * 3072 + 3072 * 9216,) * 2

    # the demo model's real weights hold exactly what its config's shapes say
    config = json.loads((DEMO_MODEL / "config.json").read_text())
    assert gpu_memory.parameter_counts(str(DEMO_MODEL)) == gpu_memory._counts_from_config(config)
    assert gpu_memory.model_bytes("nobody/not-in-the-cache", "bfloat16", False) is None


def _holder_process(kind: str, what: str, gigabytes: float) -> subprocess.Popen:
    """Another process that holds GPU memory in the ledger until killed (it imports no torch: fast to start)."""
    code = ("import sys, time; from phi3lora.tasks import gpu_memory; "
            f"gpu_memory.hold({kind!r}, {what!r}, int({gigabytes} * gpu_memory.GB)); print('held', flush=True); "
            "time.sleep(120)")
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_other_processes_see_a_holder_until_it_is_gone_and_oom_sentences_name_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PHI3LORA_HOME", str(tmp_path))
    monkeypatch.setenv("PHI3LORA_GPU_MEMORY_GB", "24")
    holder = _holder_process("evaluate", "the evaluation of run 20261130-000000-abcdef", 20)
    try:
        assert [h.kind for h in gpu_memory.holders()] == ["evaluate"]
        assert gpu_memory.device_memory() == (4 * GB, 24 * GB)
        reason = failures.from_exit(1, "torch.OutOfMemoryError: CUDA out of memory", "resume the run")
        assert "the GPU was also held by the evaluation of run 20261130-000000-abcdef (about 20.00 GB" in reason
        with pytest.raises(gpu_memory.GpuMemoryBusy) as refused:  # it cannot be asked to let go: refused at once
            gpu_memory.make_room(8 * GB, "training run X", wait_seconds=30)
        assert "the GPU is held by the evaluation of run 20261130-000000-abcdef" in str(refused.value)
        with pytest.raises(gpu_memory.GpuMemoryBusy, match="more than the GPU's 24.00 GB in all"):
            gpu_memory.make_room(28 * GB, "an export of Phi-3-medium")
    finally:
        holder.kill()
        holder.wait()
    assert gpu_memory.holders() == [] and not list((tmp_path / "gpu").iterdir())  # a dead holder is swept
    assert "also held" not in failures.from_exit(1, "CUDA out of memory", "resume the run")
    gpu_memory.make_room(8 * GB, "training run X", wait_seconds=0)


@pytest.fixture
def chat_on_a_small_gpu(finished_copy, monkeypatch):
    """The finished run's adapter loaded for chat in this process, on a simulated GPU that holds the chat model or
    a training run of the demo model, not both."""
    home, run_id = finished_copy
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    chat_need = int(gpu_memory.model_bytes(str(DEMO_MODEL), "auto", False) * gpu_memory.HEADROOM["chat"])
    train_need = gpu_memory.gpu_request("train", "", str(DEMO_MODEL), "auto", False)["bytes"]
    monkeypatch.setenv("PHI3LORA_GPU_MEMORY_GB", f"{(chat_need + train_need) * 0.8 / GB:.6f}")
    service = ChatService()
    [choice] = service.resolve([f"run:{run_id}"])
    for _ in service.stream([choice], [BASE_COLUMN, choice.ref], [WHO, WHO], max_new_tokens=2):
        pass
    [held] = gpu_memory.holders()
    assert held.kind == "chat" and held.releasable and "In memory" in service.status()
    yield service, run_id
    service.release()


def test_a_run_started_from_another_process_gets_the_gpu_from_an_idle_chat_model(chat_on_a_small_gpu, monkeypatch):
    service, _ = chat_on_a_small_gpu
    monkeypatch.setenv("PHI3LORA_CANCEL_GRACE", "0")
    started = run_cli("runs", "start", "--data", SAMPLES_DIR / "identity.jsonl", "--method", "lora", "--set",
                      "model.base_model=demo", timeout=300)
    assert started.returncode == 0, started.stderr[-2000:]
    assert "No model in memory" in service.status()  # released when the start asked, before the run was queued
    run_id = started.stdout.split()[-1]
    deadline = time.monotonic() + 120  # its body asks again when it starts, finds room, and holds it
    while not [h for h in gpu_memory.holders() if h.kind == "train"] and time.monotonic() < deadline:
        assert lifecycle.run_info(run_id).status in ("queued", "running"), lifecycle.run_info(run_id).reason
        time.sleep(0.1)
    [held] = gpu_memory.holders()
    assert held.what == f"training run {run_id}" and not held.releasable
    lifecycle.cancel_run(run_id)  # no need to train: what is tested is that it got the GPU
    assert lifecycle.wait_for_run(run_id, timeout=60).status in ("cancelled", "failed")
    deadline = time.monotonic() + 10
    while gpu_memory.holders() and time.monotonic() < deadline:  # a body killed by the cancel is swept
        time.sleep(0.1)
    assert gpu_memory.holders() == []


def test_a_start_is_refused_naming_the_chat_model_while_it_is_busy(chat_on_a_small_gpu, monkeypatch):
    service, run_id = chat_on_a_small_gpu
    monkeypatch.setattr(lifecycle, "START_WAIT_SECONDS", 0.5)
    config = override(JobConfig(), [f"data.path={SAMPLES_DIR / 'identity.jsonl'}", "model.base_model=demo"])
    runs_before = {info.id for info in lifecycle.list_runs()}
    with service.lend(service.resolve([f"run:{run_id}"])[0]):  # busy: an evaluation is using it
        with pytest.raises(gpu_memory.GpuMemoryBusy) as refused:
            lifecycle.start_run(config)
    assert "the GPU is held by the chat model (demo_model, in the web app's Compare tab" in str(refused.value)
    assert {info.id for info in lifecycle.list_runs()} == runs_before  # nothing was created
    deadline = time.monotonic() + 10  # the request stands: once idle, it lets go
    while "In memory" in service.status() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "No model in memory" in service.status()


def test_an_evaluation_uses_the_chat_model_in_memory_instead_of_a_second_copy(chat_on_a_small_gpu, monkeypatch):
    service, run_id = chat_on_a_small_gpu
    loads = []
    real_load = engine.load_with_adapters
    monkeypatch.setattr(engine, "load_with_adapters", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    summary = evaluation.evaluate_run(run_id, samples=1, max_new_tokens=2, log=lambda *_: None, chat=service)
    assert loads == [] and summary["adapted_loss"] < summary["base_loss"]
    assert "In memory" in service.status() and [h.kind for h in gpu_memory.holders()] == ["chat"]

    service.release()  # nothing in memory: the evaluation loads its own copy, and holds the GPU while it runs
    evaluation.evaluate_run(run_id, samples=0, max_new_tokens=2, log=lambda *_: None, chat=service)
    assert len(loads) == 1 and gpu_memory.holders() == []
