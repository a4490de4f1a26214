import pytest

from safety_neurons.config import PROFILES, PROJECT_ROOT, ConfigError, load_config, parse_override


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_profile_loads(profile):
    cfg = load_config(profile)
    assert cfg.profile == profile
    assert cfg.run_dir.name == profile


def test_profiles_cover_the_four_kinds_of_run():
    assert set(PROFILES) == {"smoke", "quick", "default", "full", "gemma", "paper"}
    assert load_config("smoke").model == "tiny-random-llama"
    assert load_config("quick").model == load_config("default").model == load_config("full").model == "smollm2-135m-instruct"
    assert load_config("paper").chat_template == "tulu"


def test_overrides_apply_and_lists_become_tuples():
    cfg = load_config("quick", {"max_new_tokens": 7, "train_seeds": [3, 4]})
    assert cfg.max_new_tokens == 7
    assert cfg.train_seeds == (3, 4)


def test_unknown_profile_names_the_valid_ones():
    with pytest.raises(ValueError, match="smoke, quick, default, full, gemma, paper"):
        load_config("fast")


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown config key 'max_tokens'.*max_new_tokens"):
        load_config("quick", {"max_tokens": 3})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer or 'auto'"),
        ({"batch_size": "big"}, "batch_size must be a positive integer or 'auto'"),
        ({"patch_batch_size": "big"}, "patch_batch_size must be a positive integer, 'auto' or None"),
        ({"split_fractions": [0.5, 0.5, 0.5]}, "sum to 1"),
        ({"dtype": "float8"}, "dtype must be one of"),
        ({"harmful_sets": []}, "at least one prompt set"),
        ({"max_prompts_per_split": -1}, "max_prompts_per_split"),
        ({"chat_template": "alpaca"}, "chat_template must be one of"),
    ],
)
def test_bad_values_get_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config("quick", overrides)


def test_parse_override_reads_json_or_keeps_text():
    assert parse_override("max_new_tokens=32") == ("max_new_tokens", 32)
    assert parse_override("train_seeds=[1,2]") == ("train_seeds", [1, 2])
    assert parse_override("model=/models/llama") == ("model", "/models/llama")
    with pytest.raises(ValueError, match="key=value"):
        parse_override("max_new_tokens")


def test_batch_sizes_take_auto_from_the_command_line():
    cfg = load_config("smoke", dict([parse_override("batch_size=auto"), parse_override("patch_batch_size=auto")]))
    assert (cfg.batch_size, cfg.patch_batch_size) == ("auto", "auto")
    assert load_config("default").batch_size == load_config("paper").batch_size == "auto"
    assert load_config("smoke", batch_size=3).batch_size == 3


def test_none_strings_clear_optional_fields():
    assert load_config("quick", {"max_prompts_per_split": "None"}).max_prompts_per_split is None


def test_run_dir_is_under_the_project_unless_redirected(monkeypatch, tmp_path):
    monkeypatch.delenv("SAFETY_NEURONS_RUNS", raising=False)
    assert load_config("smoke").run_dir == PROJECT_ROOT / "runs" / "smoke"
    assert load_config("smoke", run_name="exp1").run_dir == PROJECT_ROOT / "runs" / "exp1"
    monkeypatch.setenv("SAFETY_NEURONS_RUNS", str(tmp_path))
    assert load_config("smoke").run_dir == tmp_path / "smoke"


def test_fingerprint_changes_with_any_field():
    a = load_config("quick")
    assert a.fingerprint() == load_config("quick").fingerprint()
    assert a.fingerprint() != load_config("quick", seed=1).fingerprint()


@pytest.mark.parametrize("bad, message", [
    (dict(dpo_optimizer="lion"), "dpo_optimizer must be adamw or sgd"),
    (dict(dpo_momentum=0.9), "dpo_momentum must be in"),
    (dict(dpo_optimizer="sgd", dpo_momentum=1.0), "dpo_momentum must be in"),
    (dict(recipe_regimes=["small_lr"]), "recipe_regimes must start with 'profile'"),
    (dict(recipe_regimes=["profile", "profile"]), "at most once"),
    (dict(recipe_k_pcts=[0]), "recipe_k_pcts must be percentages"),
    (dict(sample_seeds=[]), "sample_seeds must be a non-empty list"),
])
def test_issue_20_fields_are_checked_at_load(bad, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", **bad)
