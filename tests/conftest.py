"""Shared test setup: no hub, no GPU, the embedded demo model, the real datasets in ../shared/datasets."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere: the tests never touch a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("PHI3LORA_BASE_MODEL", None)
# pytest-xdist runs one worker per core: give each worker (and the processes it starts) its share of the cores.
# Two trainings with two OpenMP threads each on two cores run ~4x slower than one thread each.
_THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ["OMP_NUM_THREADS"] = _THREADS

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
DEMO_MODEL = REPO / "phi3lora" / "demo_model"


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m phi3lora ARGS` in a real process, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "phi3lora", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    assert DATASETS.is_dir(), f"the shared datasets are expected at {DATASETS}"
    return DATASETS
