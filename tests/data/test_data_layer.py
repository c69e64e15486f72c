"""phi3lora.data keeps to its layer, as its docstring says: of phi3lora it imports only settings, errors, config and limits;
importing it loads neither torch, transformers, gradio nor the hub libraries; each module stays small."""
import ast
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = REPO / "phi3lora" / "data"
ALLOWED = {"settings", "errors", "config", "policy"}
MAX_LINES = 400


def phi3lora_imports(path) -> set[str]:
    """The phi3lora modules outside phi3lora.data that a module of it imports, at any level of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level >= 2:  # from .. import x, from ..x import y
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("phi3lora"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("phi3lora")}
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda path: path.name)
def test_each_module_imports_only_what_the_layer_may_and_stays_small(path):
    assert phi3lora_imports(path) <= ALLOWED, path.name
    assert len(path.read_text().splitlines()) <= MAX_LINES, path.name


def test_importing_the_data_layer_loads_no_heavy_library():
    heavy = ["torch", "transformers", "gradio", "datasets", "huggingface_hub", "pyarrow"]
    code = f"import sys, phi3lora.data; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
