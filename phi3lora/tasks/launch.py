"""How a training body is started on several processes: the `accelerate launch` command, and the checks that refuse a
launch that cannot work before anything starts (at `runs start`, `runs resume` and `train`, never inside the ranks).

    one process       no launcher: the body runs as it is
    several GPUs      one process per GPU (or `--processes N`), with training_config.distributed's strategy:
                      DDP, FSDP or DeepSpeed ZeRO-2/3
    a CPU             `--processes N` ranks in DDP over gloo: slow, but it runs the same code paths as several GPUs
                      (one metrics stream, one writer per file, a cancel every rank follows), so it is testable here
    a cluster         `--accelerate-config FILE`, accelerate's own config file (machines, ranks, main process
                      address, strategy); it is read by accelerate as data, never run

Nothing here imports torch: the caller says how many GPUs it sees.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError, load_yaml
from ..errors import UserError, shorten

LAUNCHER = [sys.executable, "-m", "accelerate.commands.launch"]
STRATEGIES = {
    "ddp": ["--multi_gpu"],
    "fsdp": ["--use_fsdp"],
    "deepspeed_zero2": ["--use_deepspeed", "--zero_stage", "2"],
    "deepspeed_zero3": ["--use_deepspeed", "--zero_stage", "3"],
}
NEEDS_PACKAGE = {"deepspeed_zero2": "deepspeed", "deepspeed_zero3": "deepspeed"}
MAX_CONFIG_BYTES = 1_000_000  # an accelerate config file is a few hundred bytes


class LaunchError(UserError, ValueError):
    """Several processes were asked for in a way that cannot run here; the message says which option and why."""


def process_count(processes: int | None, gpu_count: int) -> int:
    """How many ranks a training body gets: as asked, else one per visible GPU (one on a CPU)."""
    return processes or max(gpu_count, 1)


def launcher_command(processes: int | None, distributed: str, gpu_count: int,
                     accelerate_config: str | None = None) -> list[str]:
    """`python -m accelerate.commands.launch FLAGS` to put before `-m MODULE ARGS`; [] when one process will do.
    With an accelerate config file, the file decides the strategy, the machines and (unless --processes says) the
    process count; the port is then the file's too, as every machine of a cluster must agree on it."""
    count = process_count(processes, gpu_count)
    if accelerate_config:
        return [*LAUNCHER, "--config_file", accelerate_config, *(["--num_processes", str(processes)] if processes else [])]
    if count <= 1:
        return []
    if gpu_count == 0:  # ranks on a CPU: torchrun's launcher, gloo picked by the trainer (use_cpu)
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // count))
        return [*LAUNCHER, "--multi_gpu", "--num_processes", str(count), "--num_cpu_threads_per_process", threads,
                "--main_process_port", "0"]
    # port 0: a free one, so two runs on one machine (two GPU sets) never meet on accelerate's default port
    return [*LAUNCHER, *STRATEGIES[distributed], "--num_processes", str(count), "--main_process_port", "0"]


def check_launch(processes: int | None, distributed: str, count_gpus: Callable[[], int],
                 accelerate_config: str | None = None) -> None:
    """Refuse what would only fail once launched: a strategy whose package is missing, a strategy a CPU cannot run,
    more processes than GPUs, an accelerate config file that is not a readable YAML mapping. `count_gpus` (it
    imports torch) is called only when the answer matters."""
    package = NEEDS_PACKAGE.get(distributed)
    if package and importlib.util.find_spec(package) is None:
        raise LaunchError(f"training_config.distributed: {distributed} needs the {package} package, which is not "
                          f"installed here: pip install {package} (or choose ddp or fsdp)")
    if processes is not None and processes < 1:
        raise LaunchError(f"--processes: must be 1 or more (got {processes})")
    if accelerate_config is not None:
        check_accelerate_config(accelerate_config)
        return  # a cluster: the GPUs of other machines count too, and the file says how many
    if processes is None and distributed == "ddp":
        return  # one process per visible GPU, the plain way: nothing to refuse
    gpu_count = count_gpus()
    count = process_count(processes, gpu_count)
    if count <= 1:
        return
    if gpu_count == 0:
        cores = os.cpu_count() or 1
        if distributed != "ddp":
            raise LaunchError(f"training_config.distributed: {distributed} needs CUDA GPUs; several processes on a CPU "
                              "run ddp (set training_config.distributed=ddp)")
        if count > cores:
            raise LaunchError(f"--processes: {count} processes on a CPU with {cores} cores would only slow training "
                              f"down; use at most {cores}")
    elif count > gpu_count:
        raise LaunchError(f"--processes: {count} processes but {gpu_count} GPU(s) visible here; one process per GPU, "
                          f"so use at most {gpu_count}")


def check_accelerate_config(path: str) -> Path:
    """An accelerate config file that exists and holds a YAML (or JSON) mapping; read as data only."""
    file = Path(path)
    where = f"--accelerate-config {shorten(path)}"
    if not file.is_file():
        raise LaunchError(f"{where}: no such file")
    try:
        if file.stat().st_size > MAX_CONFIG_BYTES:
            raise LaunchError(f"{where}: over {MAX_CONFIG_BYTES:,} bytes; an accelerate config file is a few hundred")
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LaunchError(f"{where}: cannot be read ({getattr(error, 'strerror', None) or error})") from None
    try:
        values: Any = load_yaml(text, where)
    except ConfigError as error:
        raise LaunchError(str(error)) from None
    if not isinstance(values, dict):
        raise LaunchError(f"{where}: must be an accelerate config (a YAML mapping, as `accelerate config` writes)")
    return file.resolve()


def visible_gpu_count() -> int:
    """CUDA GPUs a process started now would see; without loading torch when CUDA_VISIBLE_DEVICES hides them all."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return 0
    from .queue import gpu_count

    return gpu_count()


def in_a_launched_rank() -> bool:
    """True inside a process started by accelerate launch / torchrun (which name every rank's world size)."""
    return "WORLD_SIZE" in os.environ


def is_main_rank() -> bool:
    """Outside a launch, or its global rank 0: the one process that speaks for all."""
    return int(os.environ.get("RANK", "0")) == 0
