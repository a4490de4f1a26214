"""The environment table at the top of every notebook."""
from safety_neurons.config import load_config
from safety_neurons.lm.memory import CPU_ROWS
from safety_neurons.study.environment import environment_table


def test_environment_table_says_what_the_batch_size_means_here():
    table = environment_table(load_config("smoke", device="cpu"))
    assert table.loc["device", "value"] == "cpu"
    assert table.loc["batch_size", "value"] == "4"
    auto = environment_table(load_config("smoke", device="cpu", batch_size="auto"))
    assert auto.loc["batch_size", "value"] == f"auto ({CPU_ROWS} on a CPU)"
