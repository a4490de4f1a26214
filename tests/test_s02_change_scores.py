"""Stage-02 plumbing: prompt selection, per-pair caching keyed by what the scores are made from, metrics."""
import pytest
import torch

from safety_neurons.config import load_config
from safety_neurons.io import flatten_metrics
from safety_neurons.lm.chat import encode_prompts
from safety_neurons.lm.models import load_model
from safety_neurons.lm.tiny import tiny_model
from safety_neurons.method.change_scores import NeuronRanking
from safety_neurons.stages import s02_change_scores as stage
from safety_neurons.study.rankings import m1_generations
from safety_neurons.study.prompts import finding_prompts
from safety_neurons.study.rankings import load_ranking, overlap, ranking_path, top_count
from test_models import make_ia3_adapter

pytestmark = pytest.mark.usefixtures("garak_prepared")


def test_missing_ranking_points_to_the_notebook(run_root):
    with pytest.raises(FileNotFoundError, match="02_change_scores"):
        load_ranking(load_config("smoke"))
    with pytest.raises(ValueError, match="unknown ranking method"):
        ranking_path(load_config("smoke"), method="magic")


def test_pair_scores_are_cached_by_adapter_and_generations(run_root, tmp_path):
    cfg = load_config("smoke", max_new_tokens=4)
    adapters = [tmp_path / "a", tmp_path / "b"]
    for seed, path in enumerate(adapters):
        make_ia3_adapter(tiny_model("llama"), path, targets=("down_proj",), seed=seed)
    m1 = load_model(cfg.model, device="cpu")
    ids = encode_prompts(m1.tokenizer, finding_prompts(cfg)[:3], cfg.chat_template)
    generations = m1_generations(cfg, m1, ids, progress=False)
    assert m1_generations(cfg, m1, ids, progress=False) == generations
    m2a = load_model(cfg.model, adapter=adapters[0], device="cpu")
    first, seconds = stage.pair_scores(cfg, m1, m2a, adapters[0], generations, "harmless", 0, progress=False)
    assert seconds > 0 and ranking_path(cfg).exists()
    assert ranking_path(cfg).with_name("top_neurons.parquet").exists()
    again, cached_seconds = stage.pair_scores(cfg, m1, None, adapters[0], generations, "harmless", 0, progress=False)
    assert cached_seconds == seconds  # cached: M2 is not even needed
    torch.testing.assert_close(again.scores, first.scores)
    m2b = load_model(cfg.model, adapter=adapters[1], device="cpu")
    other, _ = stage.pair_scores(cfg, m1, m2b, adapters[1], generations, "harmless", 0, progress=False)
    assert not torch.equal(other.scores, first.scores)  # another adapter: recomputed, not reused
    torch.testing.assert_close(load_ranking(cfg).scores, other.scores)


def ranking(values) -> NeuronRanking:
    return NeuronRanking("t", torch.tensor(values, dtype=torch.float32), meta={"n_prompts": 2, "n_tokens": 9})


def test_overlap_and_concentration():
    a = ranking([[4.0] + [0.0] * 19, [3.0] + [0.0] * 19])  # 40 neurons: top 5% = 2
    b = ranking([[4.0] + [0.0] * 19, [0.0, 3.0] + [0.0] * 18])
    assert top_count(a) == 2
    assert overlap(a, b, 2) == 0.5
    metrics = stage.concentration_metrics(a)
    assert metrics["top5pct"]["share_of_sq_change"] == 1.0
    assert metrics["top5pct"]["layer_share"] == {"0": 0.5, "1": 0.5}


def test_finding_metrics_keys():
    cfg = load_config("smoke", train_seeds=[0, 1], objectives=["harmless", "helpful"])
    r = ranking([[4.0] + [1.0] * 19, [3.0] + [0.5] * 19])
    runs = [("harmless", 0), ("harmless", 1), ("helpful", 0)]
    metrics = flatten_metrics(stage.finding_metrics(cfg, {k: r for k in runs}, {"mean_difference": r},
                                                    {k: 2.0 for k in runs}, 5.0))
    for key in ("n_prompts", "n_tokens", "seconds", "top5pct.share_of_sq_change", "top5pct.layer_share.0",
                "seed1.top5pct.share_of_sq_change", "objective.helpful.overlap_top5pct_with_m2",
                "baseline.mean_difference.overlap_top5pct"):
        assert key in metrics, key
    assert metrics["n_tokens"] == 9


def test_update_metrics_and_alternative_rankings_join_the_metrics(run_root):
    cfg = load_config("smoke")
    scores = torch.arange(12.0).reshape(2, 6)
    main = NeuronRanking("change_score", scores, {"mean_m1": torch.ones(2, 6), "std_m1": torch.zeros(2, 6)},
                         {"n_prompts": 2, "n_tokens": 5})
    deltas = torch.zeros(2, 6)
    deltas[1, 5] = 0.5  # a sparse update: one scale moved
    update = stage.update_metrics(main, deltas)
    alternatives = stage.alternative_rankings(cfg, main, deltas)
    flat = flatten_metrics(stage.finding_metrics(cfg, {("harmless", 0): main}, {}, {("harmless", 0): 1.0}, 2.0,
                                                 update=update, alternatives=alternatives))
    assert flat["update.concentration.top20pct"] == 1.0 and flat["update.all.moved_0p1"] == pytest.approx(1 / 12)
    assert flat["ranking.spearman_rms"] != flat["ranking.spearman_rms"]  # NaN: every neuron has RMS 1
    assert flat["alternative.ia3_delta.overlap_top5pct"] == 1.0  # the top neuron by |l - 1| is the top change score
    assert load_ranking(cfg, method="ia3_delta").top(1).tolist() == [[1, 5]]
