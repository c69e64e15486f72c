"""The multi-process launch, decided before anything starts: the accelerate command for GPUs, a CPU's ranks and a
cluster's config file, and the refusals (a missing package, a strategy a CPU cannot run, too many processes)."""
import importlib.util
import sys

import pytest

from conftest import run_cli
from phi3lora.tasks import launch, machine
from phi3lora.tasks.kinds import KINDS

def test_several_gpus_launch_training_through_accelerate(tmp_path):
    train, export = KINDS["train"], KINDS["export"]
    one = machine.body_command(tmp_path, train, {"distributed": "ddp"}, 1)
    assert one == [sys.executable, "-m", "phi3lora.tasks", str(tmp_path), "--body"]
    many = machine.body_command(tmp_path, train, {"distributed": "fsdp"}, 4)
    assert many[:6] == [*launch.LAUNCHER, "--use_fsdp", "--num_processes", "4"] and many[-4:] == one[1:]
    assert many[many.index("--main_process_port") + 1] == "0"  # a free port: two runs on one machine never meet
    zero3 = machine.body_command(tmp_path, train, {"distributed": "deepspeed_zero3"}, 2)
    assert ["--use_deepspeed", "--zero_stage", "3"] == zero3[3:6]
    assert machine.body_command(tmp_path, train, {"distributed": "ddp", "processes": 1}, 4) == one  # as asked
    assert machine.body_command(tmp_path, export, {}, 4) == one  # a merge is one process, whatever the GPUs


def test_a_cpu_runs_several_ranks_in_ddp(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ranks = machine.body_command(tmp_path, KINDS["train"], {"distributed": "ddp", "processes": 2}, 0)
    assert ranks[3:] == ["--multi_gpu", "--num_processes", "2", "--num_cpu_threads_per_process", "1",
                         "--main_process_port", "0", "-m", "phi3lora.tasks", str(tmp_path), "--body"]
    with pytest.raises(launch.LaunchError, match="fsdp needs CUDA GPUs"):
        launch.check_launch(2, "fsdp", lambda: 0)
    with pytest.raises(launch.LaunchError, match="2 GPU\\(s\\) visible here.*at most 2"):
        launch.check_launch(3, "ddp", lambda: 2)
    with pytest.raises(launch.LaunchError, match="must be 1 or more"):
        launch.check_launch(0, "ddp", lambda: 0)
    launch.check_launch(2, "ddp", lambda: 0)  # what the CPU tests run
    launch.check_launch(None, "ddp", lambda: pytest.fail("no GPU count needed for the plain default"))


def test_a_cluster_config_file_is_checked_and_handed_to_accelerate(tmp_path):
    good = tmp_path / "cluster.yaml"
    good.write_text("distributed_type: MULTI_GPU\nnum_machines: 2\nnum_processes: 16\nmachine_rank: 0\n"
                    "main_process_ip: 10.0.0.1\nmain_process_port: 29500\n")
    launch.check_launch(None, "ddp", lambda: 8, str(good))
    command = launch.launcher_command(None, "ddp", 8, str(good))
    assert command == [*launch.LAUNCHER, "--config_file", str(good)]  # the file decides machines, ranks and port
    for text, problem in [("- a list\n", "a YAML mapping"), ("x: !!python/object:os.system ls\n", "tags"),
                          ("a: &x 1\nb: *x\n", "aliases")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(launch.LaunchError, match=problem):
            launch.check_accelerate_config(str(bad))
    with pytest.raises(launch.LaunchError, match="--accelerate-config .*no such file"):
        launch.check_accelerate_config(str(tmp_path / "missing.yaml"))


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_deepspeed_is_refused_with_its_install_command_before_anything_starts(tmp_path, identity_data):
    home = tmp_path / "home"
    for command in (["runs", "start"], ["train", "--output", tmp_path / "out"]):
        done = run_cli(*command, "--data", identity_data, "--model", "demo", "--processes", "2",
                       "--set", "distributed=deepspeed_zero3", env={"PHI3LORA_HOME": str(home)})
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "training_config.distributed: deepspeed_zero3 needs the deepspeed package" in done.stderr
        assert "pip install deepspeed" in done.stderr
    assert not (home / "runs").exists() and not (tmp_path / "out").exists()  # nothing queued, nothing written
