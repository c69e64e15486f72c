"""The package keeps the shape README's Architecture section draws: the UI sits on top and nothing below imports it,
gradio stays in the UI, the processes that start, list and watch background work load no torch, and every module
stays small enough to read in one sitting."""
import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "phi3lora"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "demo_model" not in p.parts)
MAX_LINES = 400


def _imports(path) -> set[str]:
    """Absolute names of the phi3lora modules and of the outside packages that `path` imports, at any depth."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_stays_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_only_the_ui_imports_gradio_and_nothing_below_imports_the_ui():
    for path in MODULES:
        if "ui" in path.relative_to(PACKAGE).parts:
            continue
        imported = _imports(path)
        assert not any(name == "gradio" or name.startswith("gradio.") for name in imported), path
        assert not any(name.startswith("phi3lora.ui") for name in imported), path


@pytest.mark.parametrize("module", ["phi3lora.tasks.machine", "phi3lora.runs.lifecycle", "phi3lora.data",
                                    "phi3lora.config", "phi3lora.settings", "phi3lora.cli"])
def test_starting_listing_and_watching_background_work_loads_no_torch(module):
    """A task's supervisor, `runs list`/`runs show` and the status polls import these: they must stay cheap."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{module} loads {done.stdout.strip()}"


def test_the_app_serves_its_page_before_torch_loads(tmp_path):
    """A Space's cold start: building the app imports neither torch nor transformers nor peft; the first chat,
    evaluation or training does."""
    code = ("import sys; from phi3lora.ui import build_app; build_app(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PHI3LORA_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
