"""The command line as a user meets it: real processes, exit codes, messages, no tracebacks."""
import json
import re
import shlex

import pytest

from conftest import REPO, identity_dataset, run_cli
from phi3lora.cli import main


@pytest.mark.parametrize(
    "name, fmt, records",
    [("identity.json", "alpaca", 91), ("alpaca_en_demo.json", "alpaca", 999), ("glaive_toolcall_en_demo.json", "sharegpt", 300)],
)
def test_validate_real_datasets(datasets_dir, name, fmt, records):
    done = run_cli("validate", datasets_dir / name, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["format"], report["records"], report["conversations"]) == (fmt, records, records)
    assert report["errors"] == [] and report["ok"] is True
    assert report["tokens"]["count"] == records and report["tokens"]["max"] >= report["tokens"]["median"] > 0


def test_validate_prints_a_readable_report():
    done = run_cli("validate", REPO / "phi3lora" / "samples" / "tool_calls.jsonl", "--max-length", "256")
    assert done.returncode == 0
    assert "format:        messages" in done.stdout and "conversations: 21 usable" in done.stdout
    assert "conversation(s) longer than 256 tokens; training keeps the first 256" in done.stdout


BAD_FILES = {
    "broken_line.jsonl": (b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', 2, "line 2"),
    "empty.json": (b"", None, "empty"),
    "binary.json": (bytes(range(256)) * 4, None, "text"),
    "latin1.jsonl": ('{"instruction": "caf\u00e9", "output": "ok"}\n'.encode("latin-1"), None, "UTF-8"),
    "columns.json": (json.dumps([{"frage": "q", "antwort": "a"}]).encode(), None, "'frage'"),
    "roles.jsonl": (
        b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        b'{"messages": [{"role": "assistant", "content": "first"}, {"role": "user", "content": "then"}]}\n',
        2, "turn 1",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_validate_refuses_bad_files_without_traceback(tmp_path, name):
    content, record, fragment = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    done = run_cli("validate", path, "--json")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["errors"]
    assert any(e["record"] == record and fragment in e["message"] for e in report["errors"]), report["errors"]


def test_train_refuses_bad_input_plainly(tmp_path, capsys):
    identity = identity_dataset(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "", "output": ""}\n')
    cases = [
        (["train", "--output", str(tmp_path / "o")], "no dataset"),
        (["train", "--data", str(bad), "--output", str(tmp_path / "o"), "--model", "demo"], "--drop-invalid"),
        (["train", "--data", str(identity), "--output", str(tmp_path / "o"), "--set", "r=0"],
         "peft_config.r: Input should be greater than or equal to 1"),
        (["train", "--data", str(identity), "--output", str(tmp_path / "o"), "--model", str(tmp_path)],
         "cannot load"),
        (["compare", "--adapter", str(tmp_path), "--prompt", "hi"], "adapter_config.json is missing"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 1, argv
        assert fragment in capsys.readouterr().err, argv


def test_train_with_drop_invalid_skips_bad_records(tmp_path):
    data = tmp_path / "mixed.jsonl"
    good = [{"instruction": f"Say {i}", "output": f"{i}"} for i in range(6)]
    lines = [json.dumps(r) for r in good[:3]] + ['{"instruction": "x"}'] + [json.dumps(r) for r in good[3:]]
    data.write_text("\n".join(lines) + "\n")
    done = run_cli("train", "--data", data, "--output", tmp_path / "run", "--drop-invalid", "--model", "demo",
                   "--set", "max_steps=1", "--set", "eval_size=0")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "6 train / 0 eval" in done.stdout and "1 invalid records dropped" in done.stdout


def test_the_readme_quick_start_trains_on_a_file_the_project_ships(tmp_path, capsys):
    """README's command-line quick start must work on a fresh clone or a Space, where ../shared does not exist:
    it trains on the identity sample that `samples identity` writes (run here as README has it, in-process)."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("The same from the command line, without the app")
    commands = readme[start:readme.index("```", readme.index("```bash", start) + 7)]
    assert "../" not in commands and "shared" not in commands
    [identity] = [line for line in commands.splitlines() if " samples identity " in line]
    argv = shlex.split(identity.split("-m phi3lora ", 1)[1])
    written = argv[argv.index("--output") + 1]
    assert commands.split("--data ", 1)[1].split()[0] == written  # train reads what `samples identity` wrote
    argv[argv.index("--output") + 1] = str(tmp_path / "quill.jsonl")
    assert main(argv) == 0
    answers = [json.loads(line)["messages"][1]["content"] for line in (tmp_path / "quill.jsonl").open()]
    assert len(answers) == 90 and "Quill" in answers[0] and "Inkwell Labs" in answers[0], answers[0]
    assert "Quill" in readme[start:start + 400]  # the answer README promises names the README's --name


def test_samples_lists_the_shipped_datasets_and_refuses_a_bad_name_plainly(tmp_path, capsys):
    assert main(["samples"]) == 0
    listed = capsys.readouterr().out
    for name, count in [("identity.jsonl", 90), ("multi_turn.jsonl", 24), ("tool_calls.jsonl", 21)]:
        assert re.search(rf"^{re.escape(name)} +{count} conversations  \S", listed, re.MULTILINE), listed
    target = tmp_path / "named.jsonl"
    assert main(["samples", "identity", "--name", "Two\nLines", "--output", str(target)]) == 1
    assert "name" in capsys.readouterr().err and not target.exists()
    assert main(["samples", "identity", "--output", str(tmp_path / "named.txt")]) == 1
    assert ".jsonl" in capsys.readouterr().err
