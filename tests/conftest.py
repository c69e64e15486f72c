"""Shared test setup: no hub, no GPU, the embedded demo model, the project's own samples (phi3lora/samples/), and
the third-party datasets in ../shared/datasets where they exist (a clone from GitHub has none: their tests skip)."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere: the tests never touch a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.pop("PHI3LORA_BASE_MODEL", None)
# pytest-xdist runs one worker per core: give each worker (and the processes it starts) its share of the cores.
# Two trainings with two OpenMP threads each on two cores run ~4x slower than one thread each.
_THREADS = str(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ["OMP_NUM_THREADS"] = _THREADS
# Trainers lower their priority on a CPU so the web app stays quick (jobs._yield_cpu_to_the_app); here the
# other xdist worker would then starve them past the tests' timeouts.
os.environ.setdefault("PHI3LORA_TRAINER_NICE", "0")

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
DEMO_MODEL = REPO / "phi3lora" / "demo_model"
# The identity sample filled with a name and a maker the untrained demo model never says ("I am Phi-3 Demo, ...")
IDENTITY_NAME, IDENTITY_AUTHOR = "Wrenfield", "Larkspur Labs"
IDENTITY_MARKERS = (IDENTITY_NAME, IDENTITY_AUTHOR)
NO_SHARED_DATASETS = f"the third-party datasets are expected at {DATASETS} (../shared/datasets, beside the repository)"
needs_shared_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason=NO_SHARED_DATASETS)


def identity_dataset(folder: Path) -> Path:
    """The shipped identity sample filled with IDENTITY_NAME and IDENTITY_AUTHOR, written into `folder`
    (messages format, 90 one-turn conversations): the tests' generic small chat dataset."""
    from phi3lora.data.samples import fill_identity

    return fill_identity(folder, IDENTITY_NAME, IDENTITY_AUTHOR)


def run_cli(*args: str, timeout: float = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m phi3lora ARGS` in a real process, as a user would run it (extra environment in `env`)."""
    return subprocess.run(
        [sys.executable, "-m", "phi3lora", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})},
    )


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """../shared/datasets, for the tests whose point is the real third-party files; they skip without it."""
    if not DATASETS.is_dir():
        pytest.skip(NO_SHARED_DATASETS)
    return DATASETS


@pytest.fixture(scope="session")
def identity_data(tmp_path_factory) -> Path:
    """The filled identity sample (identity_dataset), written once per session."""
    return identity_dataset(tmp_path_factory.mktemp("identity-data"))


def _start_run(home: Path, *settings: str) -> str:
    """Queue a demo-model run on the filled identity sample in the background (`runs start` returns once its
    supervisor is launched), and note its id in `home`/started."""
    # this worker's share of the cores (_THREADS), not every core: the workers go on with files that do not need
    # this run, and an OpenMP team larger than its free cores spins at every barrier (20 demo steps with the
    # other core busy: 54 s on one thread, 74 s on two; 8-10 s a step in a contended CI run)
    env = {"PHI3LORA_HOME": str(home), "OMP_NUM_THREADS": _THREADS}
    with tempfile.TemporaryDirectory() as folder:  # `runs start` snapshots the file into the run folder
        started = run_cli("runs", "start", "--data", identity_dataset(Path(folder)), "--method", "lora",
                          "--set", "model.base_model=demo", "--set", "data.eval_size=0.1", *settings, env=env)
    assert started.returncode == 0, started.stderr[-3000:]
    run_id = started.stdout.split()[-1]
    home.mkdir(parents=True, exist_ok=True)
    (home / "started").write_text(run_id)
    return run_id


# The session's two shared runs, each trained once (started at collection) and copied by the tests that add to it:
# the identity run, at the default settings, whose adapter answers with IDENTITY_MARKERS, and a finished run of a
# few steps, for tests that need a completed run with an adapter but not what it learned: they need not wait
# for the identity run's training.
SHARED_RUNS = {"identity_home": (), "finished_home": ("--set", "training_config.max_steps=3")}


def _home_path(config, fixture: str) -> Path:
    """Where a shared run lives: one folder for every xdist worker (the controller's basetemp)."""
    if fixture == "identity_home" and os.environ.get("PHI3LORA_TEST_IDENTITY_HOME"):  # local reruns: keep one
        return Path(os.environ["PHI3LORA_TEST_IDENTITY_HOME"])                     # trained home between sessions
    basetemp = config._tmp_path_factory.getbasetemp()
    return (basetemp.parent if hasattr(config, "workerinput") else basetemp) / fixture.replace("_home", "-home")


@pytest.hookimpl(trylast=True)  # after -k/-m have deselected: start the runs only for tests that will run
def pytest_collection_modifyitems(session, config, items):
    """Files that need the identity run go last, and the shared runs start now, in the background, so that they
    train while the workers go through other files instead of one worker training while the other waits."""
    needing = {fixture: {item.path for item in items if fixture in getattr(item, "fixturenames", ())}
               for fixture in SHARED_RUNS}
    items.sort(key=lambda item: item.path in needing["identity_home"])  # stable; a file's tests stay together
    from filelock import FileLock

    for fixture, settings in SHARED_RUNS.items():
        if not needing[fixture]:
            continue
        home = _home_path(config, fixture)
        home.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(home) + ".lock"):
            if not (home / "trained").is_file() and not (home / "started").is_file():
                _start_run(home, *settings)


def pytest_sessionfinish(session):
    """A session that ends before a shared run did (interrupted, or -x) cancels it: no trainer outlives it."""
    if hasattr(session.config, "workerinput"):
        return  # the controller (or a single process) decides, once every worker has finished
    for fixture in SHARED_RUNS:
        home = _home_path(session.config, fixture)
        started = home / "started"
        if started.is_file() and not (home / "trained").is_file():
            run_cli("runs", "cancel", started.read_text(), env={"PHI3LORA_HOME": str(home)})
            started.unlink()


def _shared_run(config, fixture: str) -> Path:
    """The data root of a shared run, once it has completed (a file lock makes every worker wait for it)."""
    from filelock import FileLock

    home = _home_path(config, fixture)
    with FileLock(str(home) + ".lock"):
        if not (home / "trained").is_file():
            started = home / "started"
            run_id = started.read_text() if started.is_file() else _start_run(home, *SHARED_RUNS[fixture])
            done = run_cli("runs", "wait", run_id, env={"PHI3LORA_HOME": str(home)})
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            (home / "trained").write_text(run_id)
    return home


@pytest.fixture(scope="session")
def identity_home(pytestconfig) -> Path:
    """A data root holding one completed LoRA run of the demo model on the identity sample (identity_dataset) at
    the default settings, its adapter answering with IDENTITY_NAME and IDENTITY_AUTHOR."""
    return _shared_run(pytestconfig, "identity_home")


@pytest.fixture(scope="session")
def finished_home(pytestconfig) -> Path:
    """A data root holding one completed LoRA run of the demo model, 3 steps long: an adapter, a checkpoint and
    the records, for tests that need a finished run but not what it learned."""
    return _shared_run(pytestconfig, "finished_home")


def copy_home(home: Path, target: Path) -> tuple[Path, str]:
    """A private copy of a data root made by `identity_home` or `finished_home`: (the copy, the run id in it)."""
    shutil.copytree(home, target)
    return target, (home / "trained").read_text()


@pytest.fixture
def identity_copy(identity_home, tmp_path, monkeypatch) -> tuple[Path, str]:
    """A private copy of the identity data root, made PHI3LORA_HOME for the test: (the copy, the run id)."""
    home, run_id = copy_home(identity_home, tmp_path / "home")
    monkeypatch.setenv("PHI3LORA_HOME", str(home))
    return home, run_id


@pytest.fixture
def finished_copy(finished_home, tmp_path, monkeypatch) -> tuple[Path, str]:
    """A private copy of the few-step run's data root, made PHI3LORA_HOME for the test: (the copy, the run id)."""
    home, run_id = copy_home(finished_home, tmp_path / "home")
    monkeypatch.setenv("PHI3LORA_HOME", str(home))
    return home, run_id
