import pytest

from phi3lora.config import PHI3_LINEAR_MODULES, ConfigError, JobConfig, field_help


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
    config = JobConfig().with_overrides(
        ["learning_rate=2e-4", "peft_config.target_modules=[qkv_proj, embed_tokens]", "model.load_in_4bit=true"]
    )
    path = tmp_path / "job.yaml"
    path.write_text(config.to_yaml())
    again = JobConfig.from_yaml(path)
    assert again == config
    assert again.method == "qlora"
    assert again.peft_config.target_modules == ["qkv_proj", "embed_tokens"]


def test_overrides_remember_what_the_user_set():
    config = JobConfig().with_overrides(["learning_rate=2e-4"]).with_overrides(["peft_config.r=8"])
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
        ("bogus=1", "unknown setting 'bogus'"),
        ("optimizer.lr=1", "unknown section 'optimizer'"),
        ("learning_rate", "expected key=value"),
    ],
)
def test_bad_settings_name_the_field(assignment, fragment):
    with pytest.raises(ConfigError) as error:
        JobConfig().with_overrides([assignment])
    assert fragment in str(error.value)


def test_bad_yaml_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("training_config: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        JobConfig.from_yaml(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("training_config:\n  learnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match="training_config.learnin_rate: unknown setting"):
        JobConfig.from_yaml(unknown)
    with pytest.raises(ConfigError, match="cannot read config file"):
        JobConfig.from_yaml(tmp_path / "missing.yaml")


def test_phi3_module_names():
    assert set(PHI3_LINEAR_MODULES) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}


def test_yaml_no_stays_a_word():
    config = JobConfig().with_overrides(["eval_strategy=no", "save_strategy=no"])
    assert (config.training_config.eval_strategy, config.training_config.save_strategy) == ("no", "no")
