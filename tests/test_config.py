import pytest

from phi3lora.config import (DEFAULT_MAX_LENGTH, PHI3_LINEAR_MODULES, ConfigError, JobConfig, eval_size_problem,
                             field_help)
from phi3lora.job_builder import (Layer, assignments_layer, build_job, file_layer, model_defaults, resolve_job,
                                  text_layer, values_layer, write_job_file)
from phi3lora.job_builder import load_job, override


def test_defaults_follow_the_phi3_lora_recipe():
    config = JobConfig()
    assert (config.peft_config.r, config.peft_config.lora_alpha, config.peft_config.lora_dropout) == (16, 32, 0.05)
    assert config.peft_config.target_modules == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert config.training_config.learning_rate == 1e-4
    assert config.training_config.assistant_only_loss is True
    assert config.model.trust_remote_code is False
    assert config.method == "lora"


def test_every_field_has_help_text():
    texts = field_help()
    assert len(texts) > 30
    assert not [name for name, text in texts.items() if len(text) < 10]


def test_yaml_round_trip(tmp_path):
    config = override(JobConfig(),
        ["learning_rate=2e-4", "peft_config.target_modules=[qkv_proj, embed_tokens]", "model.load_in_4bit=true"]
    )
    path = tmp_path / "job.yaml"
    path.write_text(config.to_yaml())
    again = load_job(path)
    assert again == config
    assert again.method == "qlora"
    assert again.peft_config.target_modules == ["qkv_proj", "embed_tokens"]


def test_overrides_remember_what_the_user_set():
    config = override(override(JobConfig(), ["learning_rate=2e-4"]), ["peft_config.r=8"])
    assert config.explicitly_set() == {"training_config.learning_rate", "peft_config.r"}


@pytest.mark.parametrize(
    "assignment, fragment",
    [
        ("learning_rate=-1", "training_config.learning_rate: Input should be greater than 0 (got -1)"),
        ("training_config.max_length=abc", "training_config.max_length: Input should be a valid integer"),
        ("peft_config.target_modules=[q_proj]", "unknown module 'q_proj'"),
        ("target_modules=[all-linear, o_proj]", "'all-linear' already covers"),
        ("model.dtype=float64", "model.dtype: Input should be 'auto', 'bfloat16', 'float16' or 'float32'"),
        ("eval_size=2.5", "data.eval_size: must be a fraction below 1 or a whole number"),
        ("bogus=1", "bogus: unknown setting"),
        ("optimizer.lr=1", "unknown section 'optimizer'"),
        ("learning_rate", "expected key=value"),
    ],
)
def test_bad_settings_name_the_field(assignment, fragment):
    with pytest.raises(ConfigError) as error:
        override(JobConfig(), [assignment])
    assert fragment in str(error.value)


def test_bad_yaml_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("training_config: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("training_config:\n  learnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match="training_config.learnin_rate: unknown setting"):
        load_job(unknown)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_job(tmp_path / "missing.yaml")


def test_phi3_module_names():
    assert set(PHI3_LINEAR_MODULES) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


def test_yaml_no_stays_a_word():
    config = override(JobConfig(), ["eval_strategy=no", "save_strategy=no"])
    assert (config.training_config.eval_strategy, config.training_config.save_strategy) == ("no", "no")


# --- the one builder: every source is a layer of overrides ------------------------------------------------------

def _one_line_refusal(build) -> str:
    with pytest.raises(ConfigError) as refused:
        build()
    message = str(refused.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_later_layers_win_file_then_flags_then_set(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("method: qlora\ntraining_config: {learning_rate: 0.001, max_steps: 5, seed: 1}\npeft_config: {r: 4}\n")
    config = build_job(file_layer(job), values_layer({"max_steps": 7, "seed": 2, "method": "lora"}),
                       assignments_layer(["seed=3"]))
    t = config.training_config
    assert (t.learning_rate, t.max_steps, t.seed, config.peft_config.r, config.method) == (0.001, 7, 3, 4, "lora")
    assert config.explicitly_set() == {"model.load_in_4bit", "training_config.learning_rate",
                                       "training_config.max_steps", "training_config.seed", "peft_config.r"}


def test_the_cli_builds_config_then_flags_then_set(tmp_path):
    from phi3lora.cli import commands as cli

    job = tmp_path / "job.yaml"
    job.write_text("data: {path: from-file.json}\ntraining_config: {max_steps: 5, seed: 1}\n")
    args = cli._parser().parse_args(["train", "--output", str(tmp_path / "o"), "--config", str(job), "--data",
                                     "flag.json", "--method", "qlora", "--set", "seed=3", "--set", "method=lora"])
    config = cli._job_config(args)
    assert (config.data.path, config.training_config.max_steps, config.training_config.seed) == ("flag.json", 5, 3)
    assert config.model.load_in_4bit is False  # --set after --method


@pytest.mark.parametrize("layer", [values_layer({"method": "qlora"}), text_layer("method: qlora"),
                                   assignments_layer(["method=qlora"]), text_layer('{"model": {"load_in_4bit": true}}')])
def test_method_sets_load_in_4bit(layer):
    config = build_job(layer)
    assert config.model.load_in_4bit is True and config.method == "qlora"
    assert build_job(layer, values_layer({"method": "lora"})).model.load_in_4bit is False


def test_an_unknown_method_is_refused_naming_it():
    assert _one_line_refusal(lambda: build_job(text_layer("method: QLoRA"))) == "method: must be lora, qlora or dpo (got 'QLoRA')"
    assert _one_line_refusal(lambda: build_job(values_layer({"method": ["qlora"]}))).startswith("method: ")


def test_model_defaults_fill_only_what_nobody_set():
    config, note = resolve_job(build_job(values_layer({"model.base_model": "demo", "learning_rate": 2e-4,
                                                       "max_length": DEFAULT_MAX_LENGTH})))
    t = config.training_config
    assert (t.learning_rate, t.max_length) == (2e-4, DEFAULT_MAX_LENGTH)  # set by the user, even to a general default
    assert (t.num_train_epochs, t.per_device_train_batch_size, t.gradient_checkpointing) == (5.0, 8, False)
    assert "demo-model defaults: num_train_epochs=5.0" in note and "learning_rate" not in note
    assert resolve_job(config)[0] == config  # resolving twice changes nothing
    other, note = resolve_job(build_job(values_layer({"model.base_model": "some-org/some-phi3"})))
    assert other.training_config == JobConfig().training_config and "demo-model" not in note
    assert other.model.base_model == "some-org/some-phi3"


def test_on_a_gpu_an_open_base_model_is_phi3_with_the_general_defaults(monkeypatch):
    from phi3lora import modeling

    monkeypatch.setattr(modeling.torch.cuda, "is_available", lambda: True)
    config, note = resolve_job(build_job(values_layer({"learning_rate": 2e-4})))
    assert config.model.base_model == modeling.DEFAULT_GPU_MODEL and "default on a CUDA GPU" in note
    assert config.training_config == JobConfig().training_config.model_copy(update={"learning_rate": 2e-4})
    assert model_defaults(None)["training_config.max_length"] == DEFAULT_MAX_LENGTH


def test_resolving_names_the_demo_portably():
    from phi3lora.modeling import DEMO_MODEL_DIR

    config, _ = resolve_job(build_job(values_layer({"model.base_model": str(DEMO_MODEL_DIR)})))
    assert config.model.base_model == "demo" and config.training_config.max_length == 512


BAD_LEARNING_RATE = "training_config.learning_rate: Input should be greater than 0 (got -1)"


@pytest.mark.parametrize("source", ["yaml text", "json text", "file", "--set", "form"])
def test_a_bad_value_reads_the_same_from_every_source(source, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("training_config:\n  learning_rate: -1\n")
    layer = {"yaml text": lambda: text_layer("training_config:\n  learning_rate: -1"),
             "json text": lambda: text_layer('{"learning_rate": -1}'),
             "file": lambda: file_layer(job),
             "--set": lambda: assignments_layer(["learning_rate=-1"]),
             "form": lambda: values_layer({"training_config.learning_rate": -1})}[source]
    assert _one_line_refusal(lambda: build_job(layer())) == BAD_LEARNING_RATE


@pytest.mark.parametrize("build, fragment", [
    # unknown keys, at every depth and in every source
    (lambda: text_layer('{"bogus": 1}'), "bogus: unknown setting"),
    (lambda: text_layer("training_config: {learnin_rate: 1}"), "training_config.learnin_rate: unknown setting"),
    (lambda: values_layer({"training_config.x": 1}), "training_config.x: unknown setting"),
    (lambda: assignments_layer(["__class__=1"]), "__class__: unknown setting"),
    (lambda: text_layer("{1: 2}"), "1: unknown setting"),
    (lambda: assignments_layer(["k" * 100_000 + "=1"]), "unknown setting"),
    # settings smuggled in where another one is expected
    (lambda: text_layer('{"training_config": {"model.base_model": "../../etc"}}'),
     "training_config.model.base_model: unknown setting"),
    (lambda: assignments_layer(["model.base_model.path=../../etc"]), "model.base_model.path: unknown setting"),
    (lambda: assignments_layer(["learning_rate\nmodel.base_model=../../etc"]), "unknown section 'learning_rate\\nmodel'"),
    (lambda: build_job(assignments_layer(["learning_rate=1e-4\nmodel.base_model=../../etc"])),
     "training_config.learning_rate: Input should be a valid number"),
    (lambda: build_job(values_layer({"training_config.max_length": "512\nmodel.base_model: ../../etc"})),
     "training_config.max_length: Input should be a valid integer"),
    (lambda: build_job(text_layer('{"peft_config.r": {"model": {"base_model": "../../etc"}}}')),
     "peft_config.r: Input should be a valid integer"),
    (lambda: text_layer("model: base_model=../../etc"), "model: must be a mapping of its settings"),
    (lambda: text_layer("- model.base_model=../../etc"), "settings must be a mapping"),
    # huge numbers
    (lambda: build_job(assignments_layer(["seed=" + "9" * 30])), "training_config.seed: must be between"),
    (lambda: build_job(text_layer('{"num_train_epochs": 1e300}')), "training_config.num_train_epochs: must be between"),
    (lambda: build_job(values_layer({"data.eval_size": 10**12})), "data.eval_size: must be between"),
    (lambda: build_job(assignments_layer(["per_device_train_batch_size=1e400"])),
     "training_config.per_device_train_batch_size: Input should be a valid integer"),
    (lambda: text_layer('{"r": ' + "9" * 5000 + "}"), "settings is not valid YAML"),
    # YAML tags: no Python objects, and no other types either
    (lambda: assignments_layer(["learning_rate=!!python/object/apply:os.system [echo hi]"]), "tags such as"),
    (lambda: text_layer("training_config: {seed: !!python/name:os.system }"), "tags such as"),
    (lambda: assignments_layer(["data.path=!!binary aGVsbG8="]), "tags such as"),
    (lambda: text_layer("--- !job\nmodel: {}"), "tags such as"),
])
def test_hostile_settings_are_refused_in_one_line(build, fragment):
    def run():
        result = build()
        if isinstance(result, Layer):  # a name refused as the layer is read; a value, when the layers are built
            build_job(result)
    assert fragment in _one_line_refusal(run)


def test_the_api_settings_may_not_name_a_dataset_path():
    from phi3lora.ui import train_tab

    message = _one_line_refusal(lambda: train_tab.settings_config('{"data": {"path": "../../etc/passwd"}}'))
    assert "not as data.path" in message


def test_eval_size_is_checked_once_for_the_config_and_the_split():
    from phi3lora import data

    reason = eval_size_problem(2.5)
    assert reason == "must be a fraction below 1 or a whole number of conversations"
    assert f"data.eval_size: {reason} (got 2.5)" == _one_line_refusal(lambda: build_job(values_layer({"eval_size": 2.5})))
    with pytest.raises(data.DatasetError, match=f"eval_size {reason}"):
        data.split_train_eval([], 2.5, seed=0)
    assert eval_size_problem(-0.1) == "must not be negative" and eval_size_problem(0) is None


def test_the_train_forms_command_line_rebuilds_exactly_its_job(identity_data):
    """The Train tab's YAML and CLI views, read back by the CLI's own parser, give the job the form starts."""
    import shlex

    from phi3lora.cli import commands as cli
    from phi3lora.ui import train_tab

    values = {key: train_tab.field_info(key).default for key in train_tab.form_keys()}
    values |= model_defaults("demo") | {"model.base_model": "demo", "training_config.max_steps": 8,
                                        "peft_config.target_modules": ["qkv_proj", "o_proj"],
                                        "training_config.eval_strategy": "no", "training_config.learning_rate": 5e-4}
    form = ({"path": str(identity_data)}, "auto", True, 0.2, "qlora",
            *[values[key] for key in train_tab.form_keys()])
    expected, _ = resolve_job(train_tab.form_config(*form[:5], form[5:]))
    yaml_text, command = train_tab.preview(train_tab.TrainForm(*form[:5], tuple(form[5:])))
    assert build_job(text_layer(yaml_text)) == expected
    argv = shlex.split(command.splitlines()[-1])
    assert argv[:4] == ["python", "-m", "phi3lora", "train"]
    rebuilt, _ = resolve_job(cli._job_config(cli._parser().parse_args(argv[3:])))
    assert rebuilt == expected
    assert "--set" in argv and "training_config.max_length=512" not in argv  # the demo default needs no --set


def test_a_job_file_is_written_once(tmp_path):
    config = build_job(values_layer({"max_steps": 3}))
    path = write_job_file(config, tmp_path)
    first = path.stat()
    assert write_job_file(build_job(text_layer(path.read_text())), tmp_path) == path
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (first.st_ino, first.st_mtime_ns)  # untouched
    write_job_file(build_job(values_layer({"max_steps": 4})), tmp_path)
    assert load_job(path).training_config.max_steps == 4
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
