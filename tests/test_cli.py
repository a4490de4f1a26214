import re

import pytest

from safety_neurons.cli import main


def test_bad_override_is_a_clear_error(capsys):
    assert main(["run", "--profile", "smoke", "-p", "max_new_tokens"]) == 1
    assert "key=value" in capsys.readouterr().err


def test_unknown_profile_is_a_clear_error(capsys):
    assert main(["run", "--profile", "tiny"]) == 1
    assert "unknown profile 'tiny'" in capsys.readouterr().err


def test_unknown_config_key_is_a_clear_error(capsys):
    assert main(["run", "--profile", "smoke", "-p", "k=3"]) == 1
    assert "unknown config key 'k'" in capsys.readouterr().err


# Each bad input a user met (issue 22), on the command line: one line naming the problem and the fix.
@pytest.mark.parametrize("param, message", [
    ("dpo_learning_rate=abc", "dpo_learning_rate must be a number, got 'abc'"),
    ("dpo_epochs=abc", "dpo_epochs must be a number"),
    ("tune_learning_rate=abc", "tune_learning_rate must be a number"),
    ("tune_k_pct=abc", "tune_k_pct must be a number"),
    ('patch_k_pcts=["a"]', "patch_k_pcts must be a list of numbers"),
    ("safeguard_ks=5", r"safeguard_ks must be a list, got the single value 5: write it as a list, e.g. -p safeguard_ks='\[5\]'"),
    ("seed=abc", "seed must be an integer, got 'abc'"),
    ("split_seed=1.5", "split_seed must be an integer, got 1.5"),
    ("device=gpu", "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("harmful_sets=harmbench", "harmful_sets must be a list, got the single value 'harmbench'"),
    ('harmful_sets=["harmbnch"]', "harmful_sets: unknown prompt set 'harmbnch'"),
    ("profile=quick", "profile is not an override: choose it with --profile quick"),
    ("run_name=a/b", "run_name must be a folder name"),
])
def test_bad_inputs_are_one_line_at_load(capsys, param, message):
    assert main(["run", "--profile", "smoke", "--no-progress", "-p", param]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err


def test_a_numeric_run_name_is_a_name():
    from safety_neurons.config import load_config, parse_override

    assert load_config("smoke", dict([parse_override("run_name=2024")])).run_name == "2024"


def test_data_with_an_unknown_profile_is_one_line(capsys):
    assert main(["data", "--profile", "nosuch"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "unknown profile 'nosuch'" in err


def test_every_config_field_rejects_a_wrong_type_at_load():
    import dataclasses

    from safety_neurons.config import ConfigError, RunConfig, load_config

    for field in dataclasses.fields(RunConfig):
        if field.name == "profile":
            continue
        with pytest.raises(ConfigError, match=field.name):
            load_config("smoke", {field.name: {"not": "valid"}})


def test_a_relative_model_folder_resolves_against_the_callers_directory(tmp_path, monkeypatch):
    from safety_neurons.config import load_config

    (tmp_path / "mymodel").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config("smoke", {"model": "mymodel"}).model == str(tmp_path / "mymodel")


def test_report_prints_markdown_from_a_runs_metrics_and_refuses_a_run_without_any(run_root, capsys):
    from safety_neurons.config import load_config
    from safety_neurons.io import write_json_atomic

    assert main(["report", "--profile", "smoke"]) == 1
    assert "no metrics in" in capsys.readouterr().err
    cfg = load_config("smoke")
    write_json_atomic(cfg.metrics_path("03_dynamic_patching"), {"C.phrase.safety.k5": 0.5, "C.phrase.safety.k5.lo": 0.4,
                                                                 "C.phrase.random.k5": 0.0, "C.phrase.random.k5.hi": 0.1})
    assert main(["report", "--profile", "smoke"]) == 0
    assert "**holds in part**" in capsys.readouterr().out
