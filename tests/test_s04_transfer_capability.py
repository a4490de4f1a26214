"""Stage 04 plumbing on tiny models: cached arms, static-patch perplexity, tables and metric keys."""
import numpy as np
import pytest

from safety_neurons.config import load_config
from safety_neurons.io import flatten_metrics
from safety_neurons.judges.evaluation import perplexity
from safety_neurons.lm.models import load_model
from safety_neurons.method.patching import patched_perplexity
from safety_neurons.stages import s04_transfer_capability as stage
from safety_neurons.study.arms import Arm, ArmRunner


N_LAYERS, D_MLP = 2, 64
ALL = [(layer, i) for layer in range(N_LAYERS) for i in range(D_MLP)]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b", "Rain fell all night."]


@pytest.fixture(scope="module")
def models(adapter):
    return load_model("tiny-random-llama", device="cpu"), load_model("tiny-random-llama", adapter=adapter, device="cpu")


def test_static_patch_perplexity_is_m1_with_no_neurons_and_m2_with_all(models):
    m1, m2 = models
    p1, p2 = perplexity(m1, TEXTS, progress=False), perplexity(m2, TEXTS, progress=False)
    assert p1 != pytest.approx(p2)
    assert patched_perplexity(m1, m2, TEXTS, [], progress=False) == pytest.approx(p1, rel=1e-6)
    assert patched_perplexity(m1, m2, TEXTS, ALL, progress=False) == pytest.approx(p2, rel=1e-5)
    half = patched_perplexity(m1, m2, TEXTS, ALL[::2], progress=False)
    assert half != pytest.approx(p1) and half != pytest.approx(p2)


def test_arm_runner_patches_caches_and_shares_m1(run_root, models, adapter):
    from safety_neurons.study.arms import arms_dir

    cfg = load_config("smoke")
    m1, m2 = models
    runner = ArmRunner(cfg, m1, m2, adapter)
    prompts = ["how do I pick a lock", "write a poem", "plan a trip"]
    full = runner.run("safety", "x", prompts, ALL)
    assert full.answers == runner.run("m2", "x", prompts).answers  # all neurons patched = M2
    assert runner.run("safety", "x", prompts, []).answers == runner.run("m1", "x", prompts).answers
    assert len(list(arms_dir(cfg).iterdir())) == 4  # one file per generation, in the run's store
    other = ArmRunner(cfg, m1, m1, adapter)
    cached = other.run("m1", "y", prompts)  # M1's key ignores M2 and the set's label: read back, not regenerated
    assert cached.seconds == runner.run("m1", "x", prompts).seconds
    with pytest.raises(ValueError, match="takes no neurons"):
        runner.run("m1", "x", prompts, ALL)
    with pytest.raises(ValueError, match="pass the neurons"):
        runner.run("safety", "x", prompts)


def test_arm_runner_reads_stage_03s_arms(run_root, models, adapter):
    """A patched arm stage 03 stored (same prompts, adapter, neurons) is what stage 04 gets back."""
    from safety_neurons.lm.chat import encode_prompts
    from safety_neurons.lm.models import adapter_digest
    from safety_neurons.study.arms import arm_key, run_arm

    cfg = load_config("smoke", patch_path="two_model")
    m1, m2 = models
    prompts = ["how do I pick a lock", "write a poem"]
    ids = encode_prompts(m1.tokenizer, prompts, cfg.chat_template)
    neurons = ALL[::3]
    from safety_neurons.lm.generation import Generation

    def stored(prompt_ids):
        return [Generation(i, [5], "stored by stage 03", False) for i in prompt_ids]

    run_arm(cfg, "safety", 5.0, None, arm_key(cfg, ids, "two_model", adapter_digest(adapter), neurons), stored, ids)
    assert ArmRunner(cfg, m1, m2, adapter).run("safety", "harmbench", prompts, neurons).answers == ["stored by stage 03"] * 2


def test_early_stopping_arms_keep_the_verdicts(run_root, models, adapter):
    from safety_neurons.study.arms import refused_already

    cfg = load_config("smoke", eval_tokens=12)
    m1, m2 = models
    prompts = ["how do I pick a lock", "write a poem", "plan a trip"]
    full = ArmRunner(cfg, m1, m2, adapter).run("safety", "x", prompts, ALL[::2])
    early = ArmRunner(cfg, m1, m2, adapter, early=True)
    assert early.run("safety", "x", prompts, ALL[::2]).answers == full.answers  # a full arm serves early requests
    assert early.opts["stop_when"] is refused_already


def arm(refused):
    return Arm("a", 5.0, None, ["."] * len(refused), list(refused), len(refused), 1.0)


def test_transfer_table_gains_and_metric_keys():
    arms = {"harmbench": {"m1": arm([0, 0, 0, 0]), "m2": arm([1, 1, 1, 1]), "safety": arm([1, 1, 0, 0]), "random": arm([0, 0, 0, 1])}}
    table = stage.transfer_table(arms)
    assert table.loc["harmbench", "gain_over_m1"] == 0.5 and table.loc["harmbench", "gain_over_random"] == 0.25
    ppl, over = {"m1": 10.0, "patched": 10.5, "m2": 11.0}, {"m1": 0.0, "patched": 0.1, "m2": 0.2}
    flat = flatten_metrics(stage.transfer_metrics(table, ppl, over, 3.0))
    for key in ("transfer.harmbench.m1", "transfer.harmbench.safety", "transfer.harmbench.random", "dgen.ppl.patched",
                "overrefusal.m2", "seconds"):
        assert key in flat, key
    assert not any(k.startswith("judge.") for k in flat)  # one judge: nothing to compare
    scores = {"refusal-phrase": {("harmbench", a): by.score for a, by in arms["harmbench"].items()},
              "beaver-cost": {("harmbench", a): np.ones(4) for a in arms["harmbench"]}}
    safety, kappa = stage.judge_tables(scores)
    flat = flatten_metrics(stage.transfer_metrics(table, ppl, over, 3.0, safety, kappa))
    assert flat["judge.kappa.refusal-phrase.beaver-cost"] == 0.0  # one judge constant, the other not: no agreement beyond chance
    assert "judge.kappa.beaver-cost.refusal-phrase" not in flat  # each pair once
    assert flat["judge.safety.refusal-phrase.harmbench.safety"] == 0.5 and flat["judge.safety.beaver-cost.harmbench.m1"] == 1.0


def test_model_judges_score_the_transfer_answers_and_are_cached(run_root, tmp_path, monkeypatch):
    from test_model_judges import write_score_checkpoint

    from safety_neurons.judges import model_judges

    beaver = tmp_path / "beaver"
    write_score_checkpoint(beaver, style="new", seed=2)
    cfg = load_config("smoke", judges=("refusal-phrase", f"beaver-cost={beaver}"))
    assert not stage.stops_early(cfg) and stage.stops_early(load_config("smoke"))
    prompts = {"harmbench": ["how do I pick a lock", "make a weapon", "steal a car"]}
    answers = ["I'm sorry, I can't help with that.", "Sure: first, get", "Here is how"]
    arms = {"harmbench": {"m1": Arm("m1", 0.0, None, answers, [True, False, False], 9, 1.0)}}
    scores = stage.judge_scores(cfg, arms, prompts, progress=False)
    judge = model_judges.load_judge("beaver-cost", model=str(beaver))
    assert list(scores["beaver-cost"][("harmbench", "m1")]) == list(judge.safety_scores(prompts["harmbench"], answers))
    assert list(scores["refusal-phrase"][("harmbench", "m1")]) == [1.0, 0.0, 0.0]
    monkeypatch.setattr(model_judges, "load_judge", lambda *a, **k: pytest.fail("cached scores must not load the judge"))
    again = stage.judge_scores(cfg, arms, prompts, progress=False)
    assert list(again["beaver-cost"][("harmbench", "m1")]) == list(scores["beaver-cost"][("harmbench", "m1")])
    with pytest.raises(ValueError, match="unknown judge 'gpt4'"):
        load_config("smoke", judges=("gpt4",))




def test_transfer_effects_per_set_under_every_measure(run_root, m1, m2, adapter):
    """C per red-team set under the phrase judge and the teacher-forced measures: with the 'top k' every
    neuron the measures' C is 1 (M2 itself), and the metrics are C.<measure>.{safety,random}.<set>."""
    import torch

    from safety_neurons.method.change_scores import NeuronRanking

    cfg = load_config("smoke", patch_k_pcts=[100], headline_pct=100, bootstrap_samples=50)
    ranking = NeuronRanking("change_score", torch.rand(2, 64, generator=torch.Generator().manual_seed(0)))
    prompts = {"harmbench": ["how do I pick a lock", "make a weapon", "steal a car"], "jailbreak": ["pretend you can", "now do it"]}
    arms = {s: {"m1": arm([0] * len(p)), "m2": arm([1] * len(p)), "safety": arm([1] + [0] * (len(p) - 1)),
                "random": arm([0] * len(p))} for s, p in prompts.items()}
    effects = stage.transfer_effects(cfg, m1, m2, adapter, ranking, prompts, arms)
    assert sorted(set(effects["measure"])) == ["likelihood", "logodds", "phrase"] and set(effects["set"]) == set(prompts)
    measured = effects[effects["measure"] != "phrase"]
    assert np.allclose(measured["C"], 1.0, atol=1e-4) and np.allclose(measured["C_random"], 1.0, atol=1e-4)
    table = stage.transfer_table(arms)
    flat = flatten_metrics(stage.transfer_metrics(table, {"m1": 1.0}, {"m1": 0.0}, 1.0, effects=effects))
    assert flat["C.phrase.safety.harmbench"] == pytest.approx(1 / 3) and flat["C.phrase.random.jailbreak"] == 0.0
    assert flat["C.logodds.safety.jailbreak"] == pytest.approx(1.0, abs=1e-4)
    for key in ("C.likelihood.safety.harmbench.lo", "C.likelihood.random.jailbreak.hi", "pvalue.logodds.harmbench",
                "pvalue.phrase.jailbreak", "transfer.harmbench.safety"):
        assert key in flat, key
    undefined = {"x": {a: arm([1, 1]) for a in stage.TRANSFER_ARMS}}  # M2 no safer than M1: the phrase C is NaN
    from safety_neurons.study.effects import score_effects

    row = score_effects({"safety": undefined["x"]["safety"].score}, undefined["x"]["m1"].score, undefined["x"]["m2"].score,
                        [undefined["x"]["random"].score], measure="phrase", pct=5.0, n_boot=10, seed=0).iloc[0]
    assert np.isnan(row["C"]) and np.isnan(row["pvalue"]) and row["random_arms"] == 1
