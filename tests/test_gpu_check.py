"""bench/gpu_check.py's plumbing on the CPU. The whole dry run (every part at toy size) takes minutes here, so the
tests run the parent with one real part (the build) and check the rest of the plan it writes, and time-box and
fail real child processes. `bash bench/gpu_check.sh --dry-run` runs every part."""
import json
import os
import subprocess
import sys
import time

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import gpu_check  # noqa: E402
import gpu_peaks  # noqa: E402
import gpu_setup  # noqa: E402


def test_the_dry_run_builds_phi3_mini_with_its_sliding_window_and_plans_every_part(tmp_path):
    out, work = tmp_path / "check.json", tmp_path / "work"
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--only", "build", "--only", "compare", "--out", str(out),
                           "--keep", str(work)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    parts = {p["name"]: p for p in report["parts"]}
    built = parts["build Phi-3-mini"]
    assert built["status"] == "ok" and built["output"]["sliding_window"] == 2047
    assert built["output"]["vocab_size"] == 32064 and built["output"]["tokenizer"]  # which tokenizer, said
    assert json.loads((work / "phi3-mini" / "config.json").read_text())["sliding_window"] == 2047
    assert parts["probe"]["status"] == "skipped" and "--only" in parts["probe"]["why"]
    assert parts["train ours LoRA"]["why"] == "not asked for (--only)"
    assert parts["compare base + 2 adapters"]["why"] == "needs train ours LoRA, which did not succeed"
    # every child's command line, as it would run
    commands = report["commands"]
    model = str(work / "phi3-mini")
    for variant in ("cookbook LoRA", "ours LoRA", "cookbook QLoRA", "ours QLoRA"):
        command = commands[f"train {variant}"]
        assert command[1].endswith("bench/training.py") and model in command
        assert ("--set=load_in_4bit=true" in command) == ("QLoRA" in variant)
    assert any(a.startswith("--keep-adapter=") for a in commands["train ours QLoRA"])
    assert {a for a in commands["compare base + 2 adapters"] if a.startswith("--adapter=")} == {
        f"--adapter=lora={work / 'adapter-lora'}", f"--adapter=qlora={work / 'adapter-qlora'}"}
    assert "--memory-cap-gb" in commands["out of memory, once"]  # a CPU's failed allocation, fast and harmless
    assert "attn_implementation=flash_attention_2" in report["gpu_settings_of_ours"]["ours LoRA"]
    assert "use_liger_kernel=true" in report["gpu_settings_of_ours"]["ours QLoRA"]
    requirements = {r["requirement"]: r for r in report["requirements"]}
    assert requirements["torch==2.13.0"]["status"] == "ok"
    assert requirements["liger-kernel==0.8.5"]["status"] == "GPU only: not installed here"
    table = {line[0]: line for line in report["table"]}
    assert table["setup: data in the repository"][1] == "ok" and "sliding_window 2047" in table["build Phi-3-mini"][2]
    assert "build Phi-3-mini" in done.stdout and "notes" in done.stdout  # the printed table
    # the memory estimate against CUDA's max allocated, after the build (bash bench/gpu_check.sh --dry-run runs it)
    for checkpointing in ("true", "false"):
        command = commands[f"memory, checkpointing {checkpointing}"]
        assert command[1].endswith("bench/memory_estimate.py") and command[2:4] == ["--device-check", model]
        assert f"--set=gradient_checkpointing={checkpointing}" in command
    assert parts["memory, checkpointing true"]["why"] == "not asked for (--only)"


def test_a_part_that_fails_or_overruns_is_stopped_and_says_why(tmp_path):
    env = dict(os.environ)
    pid_file = tmp_path / "grandchild.pid"
    # a part whose own child would outlive it, were only the part killed: the whole group must go
    spawn = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    slow = gpu_check.Part("slow", "probe", [sys.executable, "-c", spawn], tmp_path / "slow.json")
    started = time.time()
    gpu_check.run_part(slow, 3, tmp_path / "slow.log", env)
    assert slow.status == "FAILED" and slow.why == "timed out after 3 s (its time box)"
    assert time.time() - started < 25
    grandchild = int(pid_file.read_text())
    time.sleep(0.2)
    assert not os.path.exists(f"/proc/{grandchild}") or "Z" in open(f"/proc/{grandchild}/stat").read().split()[2]

    broken = gpu_check.Part("broken", "probe", [sys.executable, "-c", "raise ValueError('no adapter here')"],
                            tmp_path / "broken.json")
    assert gpu_check.run_part(broken, 30, tmp_path / "broken.log", env).why == "ValueError: no adapter here"

    result = tmp_path / "fine.json"
    fine = gpu_check.Part("fine", "probe", [sys.executable, "-c", f"open({str(result)!r}, 'w').write('{{\"x\": 1}}')"],
                          result)
    assert gpu_check.run_part(fine, 30, tmp_path / "fine.log", env).output == {"x": 1} and fine.status == "ok"


def test_setup_helpers_peaks_and_data_outside_the_repository():
    assert gpu_peaks.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_peaks.peak_tflops("NVIDIA H100 PCIe") == 756.0 and gpu_peaks.peak_tflops("NVIDIA L40S") == 362.0
    assert gpu_peaks.peak_tflops("NVIDIA A10G") is None and gpu_peaks.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_setup.data_problems([REPO.parent / "elsewhere" / "identity.json"]) == [
        f"{REPO.parent / 'elsewhere' / 'identity.json'} is outside the repository"]
    assert gpu_setup.requirement_lines(gpu_setup.GPU_REQUIREMENTS) == ["flash-attn==2.8.3.post2", "liger-kernel==0.8.5"]
    # a package pip cannot get: the check goes on, with pip's reason
    installed, why = gpu_setup._pip(["--no-index", "phi3lora-no-such-package==1.0"], 120)
    assert not installed and "phi3lora-no-such-package" in why
