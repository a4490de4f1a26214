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
