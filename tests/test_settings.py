"""settings.py: every PHI3LORA_* variable declared once, parsed one way, refused with one line, and read nowhere
else; README's table of variables is the one the declarations make."""
import ast
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from phi3lora import settings
from phi3lora.policy import access
from phi3lora.policy import allowed_models
from phi3lora.policy import limits
from phi3lora.tasks import machine
from phi3lora.settings import SettingsError

README = REPO / "README.md"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No PHI3LORA_* variable from the machine running the tests leaks into these checks (the trainer's nice
    value of conftest included: each test sets what it needs)."""
    for setting in settings.SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    for name in ("SPACE_ID", "SPACE_AUTHOR_NAME"):
        monkeypatch.delenv(name, raising=False)


# --- README ----------------------------------------------------------------------------------------------------

def _readme_rows() -> dict[str, list[str]]:
    """{variable: [its cells]} from README's table of environment variables."""
    text = README.read_text()
    section = text[text.index("### Environment variables"):]
    section = section[:section.index("\n## ")]
    rows = {}
    for line in section.splitlines():
        found = re.match(r"\| `(PHI3LORA_\w+)` \|(.*)\|$", line)
        if found:
            assert found.group(1) not in rows, f"{found.group(1)} is listed twice in README"
            rows[found.group(1)] = [cell.strip() for cell in found.group(2).split(" | ")]
    return rows


def test_readme_lists_exactly_the_declared_variables_with_their_defaults():
    rows = _readme_rows()
    assert list(rows) == [setting.name for setting in settings.SETTINGS]
    for setting in settings.SETTINGS:
        assert rows[setting.name][-1] == setting.shown_default(), setting.name


def test_readme_table_is_the_generated_one():
    assert settings.markdown_table() in README.read_text(), "regenerate it: python -m phi3lora.settings"


# The test suite's own knobs, read by tests only (documented where they are used, e.g. README's Reliability).
TEST_SUITE_VARIABLES = {"PHI3LORA_FUZZ_PROFILE", "PHI3LORA_FAULT_SEED", "PHI3LORA_CHROMIUM", "PHI3LORA_FRESH_VENV",
                        "PHI3LORA_TEST_IDENTITY_HOME"}


def test_every_variable_the_docs_and_code_mention_exists():
    """A name in a message, a docstring or README that nothing reads (as PHI3LORA_PASSWORD once was) misleads."""
    files = [README, REPO / "app.py", *(REPO / "phi3lora").rglob("*.py"), *(REPO / "space_config").rglob("*.md")]
    mentioned = {(name, path.relative_to(REPO)) for path in files
                 for name in re.findall(r"\bPHI3LORA_[A-Z][A-Z0-9_]*", path.read_text())}
    unknown = sorted(f"{path}: {name}" for name, path in mentioned
                     if name not in settings.BY_NAME and name not in TEST_SUITE_VARIABLES)
    assert not unknown, "declare these in phi3lora/settings.py, or stop mentioning them:\n" + "\n".join(unknown)


# --- parsing ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, message", [
    ("PHI3LORA_MAX_NEW_TOKENS", "abc", "PHI3LORA_MAX_NEW_TOKENS=abc: a whole number from 1 up"),
    ("PHI3LORA_MAX_RECORDS", "0", "PHI3LORA_MAX_RECORDS=0: a whole number from 1 up"),
    ("PHI3LORA_MAX_STEPS", "1.5", "PHI3LORA_MAX_STEPS=1.5: a whole number from 1 up"),
    ("PHI3LORA_TRAINER_NICE", "20", "PHI3LORA_TRAINER_NICE=20: a whole number from 0 to 19"),
    ("PHI3LORA_MAX_UPLOAD_MB", "lots", "PHI3LORA_MAX_UPLOAD_MB=lots: a number above 0"),
    ("PHI3LORA_CHAT_MEMORY_GB", "0", "PHI3LORA_CHAT_MEMORY_GB=0: a number above 0"),
    ("PHI3LORA_CANCEL_GRACE", "nan", "PHI3LORA_CANCEL_GRACE=nan: a number from 0 up"),
    ("PHI3LORA_REQUIRE_LOGIN", "maybe", "PHI3LORA_REQUIRE_LOGIN=maybe: 1/true/yes/on or 0/false/no/off"),
    ("PHI3LORA_ALLOW_REMOTE_CODE", "2", "PHI3LORA_ALLOW_REMOTE_CODE=2: 1/true/yes/on or 0/false/no/off"),
    ("PHI3LORA_PUBLIC_CHAT", "everyone", "PHI3LORA_PUBLIC_CHAT=everyone: one of off, published"),
    ("PHI3LORA_USERS", "alice:secret,bob", "PHI3LORA_USERS=(hidden): comma-separated name:password pairs, "
                                           "each with a name and a password"),
])
def test_a_bad_value_of_each_kind_is_refused_in_one_line(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        settings.check_all()
    assert str(refused.value) == message
    with pytest.raises(SettingsError, match=re.escape(message)):
        settings.get(name)  # the accessor refuses it too, wherever it is read


def test_check_all_names_every_bad_variable_in_one_line(monkeypatch):
    monkeypatch.setenv("PHI3LORA_MAX_RUNS", "none")
    monkeypatch.setenv("PHI3LORA_PUBLIC_CHAT", "yes")
    message = str(pytest.raises(SettingsError, settings.check_all).value)
    assert "\n" not in message
    assert "PHI3LORA_MAX_RUNS=none: a whole number from 1 up" in message
    assert "PHI3LORA_PUBLIC_CHAT=yes: one of off, published" in message


def test_a_long_value_is_cut_and_a_password_never_shown(monkeypatch):
    monkeypatch.setenv("PHI3LORA_MAX_STEPS", "9" * 50 + "x" * 50)
    assert len(str(pytest.raises(SettingsError, settings.check_all).value)) < 120
    monkeypatch.delenv("PHI3LORA_MAX_STEPS")
    monkeypatch.setenv("PHI3LORA_USERS", "alice:hunter2,:nameless")
    assert "hunter2" not in str(pytest.raises(SettingsError, settings.check_all).value)


@pytest.mark.parametrize("word, meaning", [("1", True), ("TRUE", True), ("yes", True), (" on ", True),
                                           ("0", False), ("false", False), ("No", False), ("off", False)])
def test_one_boolean_convention(monkeypatch, word, meaning):
    monkeypatch.setenv("PHI3LORA_ALLOW_REMOTE_CODE", word)
    assert settings.get_bool("PHI3LORA_ALLOW_REMOTE_CODE") is meaning
    assert allowed_models.remote_code_allowed() is meaning


def test_unset_or_blank_means_the_default(monkeypatch):
    monkeypatch.setenv("PHI3LORA_MAX_NEW_TOKENS", "  ")
    settings.check_all()
    assert limits.limit("PHI3LORA_MAX_NEW_TOKENS") == 512
    assert settings.get_float("PHI3LORA_MAX_UPLOAD_MB") == 100.0
    assert settings.get_int("PHI3LORA_MAX_PROMPT_TOKENS") is None  # computed from the model's context
    assert limits.max_prompt_tokens(4096, 512) == 3584
    assert settings.get_int("PHI3LORA_MAX_RUNS") == 1 and machine.cancel_grace_seconds() == 60.0
    assert settings.get_int("PHI3LORA_TRAINER_NICE") == 10
    assert settings.data_root() == (Path.cwd() / "phi3lora_home").resolve()
    assert settings.password_logins() is None


def test_values_are_read_when_asked_not_at_import(monkeypatch):
    monkeypatch.setenv("PHI3LORA_CANCEL_GRACE", "1.5")
    monkeypatch.setenv("PHI3LORA_MAX_STEPS", "7")
    assert machine.cancel_grace_seconds() == 1.5
    with pytest.raises(limits.LimitExceeded, match=re.escape("over this server's limit of 7 (PHI3LORA_MAX_STEPS)")):
        limits.check("PHI3LORA_MAX_STEPS", 8, "training_config.max_steps")


def test_sign_in_defaults_follow_the_space(monkeypatch):
    assert not access.Policy.from_env().login_required
    monkeypatch.setenv("SPACE_ID", "boss/phi3lora")
    monkeypatch.setenv("SPACE_AUTHOR_NAME", "boss")
    rules = access.Policy.from_env()
    assert rules.login_required and rules.owner == "boss" and rules.allowed == {"boss"}
    monkeypatch.setenv("PHI3LORA_REQUIRE_LOGIN", "off")
    assert not access.Policy.from_env().login_required


def test_lists_and_password_logins(monkeypatch):
    monkeypatch.setenv("PHI3LORA_ALLOWED_BASE_MODELS", " demo, ,org/model,demo ")
    assert allowed_models.allowed_base_models() == ("demo", "org/model")
    monkeypatch.setenv("PHI3LORA_USERS", "alice:pass word, bob:b:c")
    assert settings.password_logins() == [("alice", "pass word"), ("bob", "b:c")]


# --- nowhere else ----------------------------------------------------------------------------------------------

def _environment_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of each read of a PHI3LORA_* variable through os.environ or os.getenv: os.environ[...],
    os.environ.get(...), os.getenv(...), "..." in os.environ."""
    def is_environ(node):
        return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
            isinstance(node, ast.Name) and node.id == "environ")

    def phi3lora_name(node):
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("PHI3LORA_")

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and is_environ(node.value) and phi3lora_name(node.slice):
            found.append((node.lineno, node.slice.value))
        elif isinstance(node, ast.Call) and node.args and phi3lora_name(node.args[0]):
            function = node.func
            if isinstance(function, ast.Attribute) and (
                    (function.attr in ("get", "pop", "setdefault") and is_environ(function.value))
                    or function.attr == "getenv"):
                found.append((node.lineno, node.args[0].value))
            elif isinstance(function, ast.Name) and function.id == "getenv":
                found.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Compare) and phi3lora_name(node.left) and any(
                is_environ(right) for right in node.comparators):
            found.append((node.lineno, node.left.value))
    return found


def test_the_reads_finder_finds_reads():
    code = ('import os\nfrom os import environ, getenv\nos.environ["PHI3LORA_A"]\nos.environ.get("PHI3LORA_B")\n'
            'os.getenv("PHI3LORA_C")\n"PHI3LORA_D" in os.environ\nenviron.get("PHI3LORA_E")\ngetenv("PHI3LORA_F")\n'
            'child = {**os.environ, "PHI3LORA_HOME": "x"}\n')
    assert [name for _, name in _environment_reads(ast.parse(code))] == [f"PHI3LORA_{c}" for c in "ABCDEF"]


def test_no_file_outside_settings_reads_a_phi3lora_variable():
    files = [REPO / "app.py", *sorted((REPO / "phi3lora").rglob("*.py"))]
    reads = [f"{path.relative_to(REPO)}:{line}: {name}" for path in files if path != REPO / "phi3lora" / "settings.py"
             for line, name in _environment_reads(ast.parse(path.read_text()))]
    assert not reads, "read these through phi3lora.settings:\n" + "\n".join(reads)


# --- the programs stop at once ---------------------------------------------------------------------------------

def test_the_app_stops_at_once_with_one_line(tmp_path):
    started = time.monotonic()
    finished = subprocess.run([sys.executable, "app.py"], cwd=REPO, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "PHI3LORA_MAX_NEW_TOKENS": "abc",
                                   "PHI3LORA_HOME": str(tmp_path / "home")})
    assert finished.returncode == 2
    assert finished.stderr == "error: PHI3LORA_MAX_NEW_TOKENS=abc: a whole number from 1 up\n"
    assert finished.stdout == ""
    assert time.monotonic() - started < 20, "the app loaded gradio before checking its settings"
    assert not (tmp_path / "home").exists()


def test_the_cli_stops_with_one_line():
    finished = run_cli("runs", "list", env={"PHI3LORA_REQUIRE_LOGIN": "sometimes"}, timeout=120)
    assert finished.returncode == 1
    assert finished.stderr == ("error: PHI3LORA_REQUIRE_LOGIN=sometimes: 1/true/yes/on or 0/false/no/off\n")
