"""Stage 01's shared steps: the run list, preference sets, SFT, training, cached evaluations, and the
lookup of trained models."""
import shutil

import pytest

from safety_neurons.config import load_config
from safety_neurons.study.checkpoints import m1_key, m1_name, m2_adapter
from safety_neurons.study.paths import ALIGNMENT
from safety_neurons.study.training import evaluate_model, preference_pairs, run_sft, train_all, training_runs

pytestmark = pytest.mark.usefixtures("garak_prepared")


def _torchrun(args: list[str], env: dict, n: int = 2):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)



def test_training_runs_cover_every_seed_and_objective():
    cfg = load_config("smoke", train_seeds=[3, 4], objectives=["harmless", "helpful"])
    assert training_runs(cfg) == [("harmless", 3), ("harmless", 4), ("helpful", 3)]


def test_objectives_must_start_with_harmless():
    with pytest.raises(ValueError, match="objectives must start with 'harmless'"):
        load_config("smoke", objectives=["helpful"])


def test_unknown_objective_is_refused(run_root):
    with pytest.raises(ValueError, match="unknown objective"):
        preference_pairs(load_config("smoke"), "funny", m1=None)


def test_sft_makes_m1_when_the_profile_names_sft_data(run_root):
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "hub" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    cfg = load_config("smoke", sft_dataset="sharegpt", dpo_epochs=1)
    with pytest.raises(FileNotFoundError, match="SFT checkpoint"):
        m1_name(cfg)
    result = run_sft(cfg, conversations_path=str(fixture), progress=False)
    assert result.steps > 0 and (Path(m1_name(cfg)) / "config.json").exists()
    assert run_sft(load_config("smoke")) is None


def test_evaluations_are_cached_by_model_and_prompts(run_root, monkeypatch):
    cfg = load_config("smoke", eval_tokens=3)
    sets = {"harmbench": ["How do I pick a lock?", "Tell me a joke."]}
    corpus = ["The quick brown fox jumps over the lazy dog."]
    evals, ppl = evaluate_model(cfg, "m1", None, sets, corpus, progress=False)
    assert len(evals["harmbench"].answers) == 2 and ppl > 1
    import safety_neurons.lm.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("re-evaluated a cached model"))
    again, ppl_again = evaluate_model(cfg, "m1", None, sets, corpus, progress=False)
    assert ppl_again == ppl and again["harmbench"].answers == evals["harmbench"].answers
    assert again["harmbench"].refused == evals["harmbench"].refused
    with pytest.raises(pytest.fail.Exception, match="re-evaluated"):  # other prompts: evaluated again
        evaluate_model(cfg, "m1", None, {"harmbench": ["Another prompt?"]}, corpus, progress=False)


def test_helpful_objective_without_benign_prompts_needs_a_hub_set():
    with pytest.raises(ValueError, match="align_benign is 0"):
        load_config("smoke", align_benign=0)
    assert load_config("smoke", align_benign=0, helpful_dataset="hh_rlhf_helpful").align_benign == 0
    assert load_config("smoke", align_benign=0, objectives=["harmless"]).objectives == ("harmless",)
    paper = load_config("paper")
    assert paper.align_benign == 0 and paper.helpful_dataset == "hh_rlhf_helpful"


def test_helpful_preferences_from_a_hub_set_are_built_and_cached(run_root, monkeypatch):
    from pathlib import Path

    import safety_neurons.data.hub as hub_data

    fixture = Path(__file__).parent / "fixtures" / "hub" / "helpful-base"
    calls, original = [], hub_data.load_hub_preferences

    def from_fixture(name, *, limit=None, **_):
        calls.append(name)
        return original(name, path=str(fixture), limit=limit)

    monkeypatch.setattr(hub_data, "load_hub_preferences", from_fixture)
    cfg = load_config("smoke", align_benign=0, helpful_dataset="hh_rlhf_helpful")
    pairs = preference_pairs(cfg, "helpful", m1=None, progress=False)
    assert calls == ["hh_rlhf_helpful"]
    assert pairs and {p.source for p in pairs} == {"hh_rlhf_helpful"}
    assert pairs[0].prompt == "What is a good name for a cat?"
    assert preference_pairs(cfg, "helpful", m1=None, progress=False) == pairs  # read back, not reloaded
    assert calls == ["hh_rlhf_helpful"]


def test_train_command_trains_once_across_two_processes(tmp_path, monkeypatch):
    """`torchrun -m safety_neurons train`: both processes train (DDP on gloo), the main one writes the
    adapter once; the notebook's train_m2 then finds it done."""
    import json
    import os
    from pathlib import Path

    loopback = {"GLOO_SOCKET_IFNAME": "lo"} if Path("/sys/class/net/lo").exists() else {}
    env = dict(os.environ, **loopback, SAFETY_NEURONS_RUNS=str(tmp_path), OMP_NUM_THREADS="1")
    done = _torchrun(["-m", "safety_neurons", "train", "--profile", "smoke", "--no-progress",
                      "-p", 'objectives=["harmless"]'], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("harmless/seed0:") == 1  # printed by the main process only
    # the override gives the run its own directory, as load_config names it
    out = tmp_path / load_config("smoke", objectives=["harmless"]).run_name / "artifacts" / ALIGNMENT / "harmless" / "seed0"
    log = json.loads((out / "adapter" / "train_log.json").read_text())
    assert log["processes"] == 2 and log["steps"] >= 1
    assert not list(out.glob(".adapter*")) and not (out / "checkpoints").exists()

    monkeypatch.setenv("SAFETY_NEURONS_RUNS", str(tmp_path))
    again = train_all(load_config("smoke", objectives=["harmless"]), progress=False)
    assert again[("harmless", 0)].seconds == log["seconds"]  # read back, not retrained


def test_train_command_rejects_a_run_the_profile_does_not_have(run_root, capsys):
    from safety_neurons.cli import main

    assert main(["train", "--profile", "smoke", "-p", 'objectives=["harmless"]', "--objective", "helpful"]) == 1
    assert "no training run of profile 'smoke'" in capsys.readouterr().err


def test_missing_m2_points_to_the_notebook(run_root):
    with pytest.raises(FileNotFoundError, match="run notebook 01_alignment first"):
        m2_adapter(load_config("smoke"))


def test_distilled_sft_trains_m1_offline_from_the_teachers_answers(run_root, monkeypatch):
    from pathlib import Path

    from safety_neurons.data.registry import load_split
    from safety_neurons.study.training import evaluate_sft, sft_conversations

    cfg = load_config("smoke", sft_dataset="distilled", sft_teacher="tiny-random-llama", sft_examples=6,
                      sft_answer_tokens=4, sft_learning_rate=0.1, sft_epochs=2.0)
    conversations = sft_conversations(cfg, progress=False)
    harmful = {p for s in cfg.train_harmful_sets for p in load_split(cfg, s, "alignment")}
    benign = {p for s in cfg.benign_sets for p in load_split(cfg, s, "alignment")}
    prompts = [c[0]["content"] for c in conversations]
    assert 0 < len(conversations) <= 6 and all([t["role"] for t in c] == ["user", "assistant"] for c in conversations)
    assert prompts[0] in harmful and prompts[1] in benign  # harmful and benign in turn
    assert all(c[1]["content"].strip() for c in conversations)
    result = run_sft(cfg, progress=False)
    assert result.steps > 0 and (Path(m1_name(cfg)) / "config.json").exists()
    assert result.log and "learning_rate" in str(result.log)

    import safety_neurons.lm.models as models

    with monkeypatch.context() as patched:
        patched.setattr(models, "load_model", lambda *a, **k: pytest.fail("asked the teacher again"))
        assert sft_conversations(cfg, progress=False) == conversations  # the teacher's answers are cached
    evaluation = evaluate_sft(cfg, {"harmbench": ["How do I pick a lock?", "Tell me a joke."]},
                              ["The quick brown fox jumps over the lazy dog."], progress=False)
    for role in ("base", "m1"):
        assert 0 <= evaluation[role]["stopped"] <= 1 and 0 <= evaluation[role]["new_turn"] <= 1
        assert len(evaluation[role]["examples"]) == 2
    assert evaluation["base"]["ppl"] > 1 and set(evaluation["base"]["refusal"]) == {"harmbench"}

    # M1 is keyed by what it is (model + SFT adapter), not by where its folder is: a moved run keeps its caches
    sets, corpus = {"harmbench": ["How do I pick a lock?"]}, ["The quick brown fox jumps over the lazy dog."]
    _, ppl = evaluate_model(cfg, "m1", None, sets, corpus, progress=False)
    key, folder = m1_key(cfg), m1_name(cfg)
    assert key.startswith(f"{cfg.model}+sft:") and key != m1_key(load_config("smoke"))
    moved_root = run_root.parent / "moved"
    shutil.move(str(run_root), str(moved_root))
    monkeypatch.setenv("SAFETY_NEURONS_RUNS", str(moved_root))
    moved = load_config("smoke", sft_dataset="distilled", sft_teacher="tiny-random-llama", sft_examples=6,
                        sft_answer_tokens=4, sft_learning_rate=0.1, sft_epochs=2.0)
    assert m1_name(moved) != folder and m1_key(moved) == key
    with monkeypatch.context() as patched:
        patched.setattr(models, "load_model", lambda *a, **k: pytest.fail("re-evaluated M1 after the run moved"))
        assert evaluate_model(moved, "m1", None, sets, corpus, progress=False)[1] == ppl
    # the DPO adapters trained on M1 are keyed by the same identity
    import safety_neurons.study.training as training

    asked = {}
    monkeypatch.setattr(training, "train_dpo", lambda name, pairs, out, **kw: asked.update(kw, name=name))
    training.train_m2(moved, "harmless", 0, [], progress=False)
    assert asked["name"] == m1_name(moved) and asked["base_key"] == key


def test_dpo_adapters_are_keyed_by_base_key_not_by_the_bases_path(tmp_path, monkeypatch):
    import safety_neurons.method.alignment as alignment
    from safety_neurons.data.preferences import Preference

    class Claimed(Exception):
        pass

    keys = []

    def claim(out, key):
        keys.append(key)
        raise Claimed  # the key is all this test needs: stop before loading a model

    monkeypatch.setattr(alignment, "claim_dir", claim)
    pairs = [Preference("How do I pick a lock?", "I can't help with that.", "First, get a tension wrench.", "test")]
    for name, base_key in [("/here/m1_merged", "tiny+sft:abc"), ("/there/m1_merged", "tiny+sft:abc"),
                           ("/here/m1_merged", None), ("/here/m1_merged", "tiny+sft:def")]:
        with pytest.raises(Claimed):
            alignment.train_dpo(name, pairs, tmp_path / "out", base_key=base_key, device="cpu", progress=False)
    assert keys[0] == keys[1] and len(set(keys)) == 3


def test_sft_settings_default_to_the_dpo_ones_and_train_with_adamw():
    from safety_neurons.study.training import sft_settings

    cfg = load_config("smoke", sft_dataset="distilled", dpo_optimizer="sgd", dpo_momentum=0.9)
    settings = sft_settings(cfg)
    assert (settings.learning_rate, settings.epochs, settings.optimizer) == (cfg.dpo_learning_rate, cfg.dpo_epochs, "adamw")
    own = sft_settings(load_config("smoke", sft_dataset="distilled", sft_learning_rate=0.5, sft_epochs=3.0))
    assert (own.learning_rate, own.epochs) == (0.5, 3.0)


@pytest.mark.parametrize("override, message", [
    ({"sft_dataset": "alpaca"}, "sft_dataset must be None"),
    ({"sft_epochs": 0}, "sft_learning_rate and sft_epochs must be positive"),
    ({"sft_learning_rate": -1.0}, "sft_learning_rate and sft_epochs must be positive"),
    ({"sft_answer_tokens": 0}, "sft_answer_tokens must be a positive integer"),
])
def test_bad_sft_settings_are_refused_at_load(override, message):
    from safety_neurons.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config("smoke", **override)
