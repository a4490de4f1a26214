"""M2's (IA)^3 update, measured: statistics of known updates, activation RMS, the alternative rankings,
and that change scores find a deliberately sparse update on the tiny Llama."""
import math

import numpy as np
import pytest
import torch

from safety_neurons.lm.models import load_model
from safety_neurons.lm.tiny import tiny_model
from safety_neurons.method.change_scores import NeuronRanking, RunningMoments, change_scores
from safety_neurons.method.patching import ia3_neuron_scales
from safety_neurons.method.update import (
    activation_rms,
    gradient_sums,
    ia3_deltas,
    normalised_ranking,
    ranking_correlations,
    top_share_of_delta,
    update_ranking,
    update_follows_gradient,
    update_statistics,
)

N_LAYERS, D_MLP = 2, 64
PROMPTS = [[1, 40, 41, 42], [1, 50, 51, 52, 53, 54, 55], [1, 60], [1, 70, 71, 72, 73, 74], [1, 80, 81, 82, 83, 84, 85, 86, 87]]

pytestmark = pytest.mark.usefixtures("one_thread")


def write_ia3_adapter(path, scales: dict[int, torch.Tensor]):
    """A PEFT (IA)^3 adapter on the tiny Llama's down_proj input with the given per-layer scales."""
    from peft import IA3Config, get_peft_model

    config = IA3Config(task_type="CAUSAL_LM", target_modules=["down_proj"], feedforward_modules=["down_proj"])
    peft_model = get_peft_model(tiny_model("llama"), config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "ia3_l" in name:
                layer = int(name.split("layers.")[1].split(".")[0])
                param.copy_(scales[layer].view_as(param))
    peft_model.save_pretrained(path)
    return path


# ---------------------------------------------------------------- statistics of known updates


def test_ia3_deltas_read_the_scales_and_leave_missing_layers_at_zero():
    scales = {1: torch.tensor([1.0, 1.5, 0.8, 1.0])}
    d = ia3_deltas(scales, 3, 4)
    assert d.shape == (3, 4) and d.dtype == torch.float64
    assert d[0].abs().sum() == 0 and d[2].abs().sum() == 0
    assert d[1].tolist() == pytest.approx([0.0, 0.5, 0.2, 0.0])
    assert ia3_deltas({"1": scales[1]}, 3, 4).equal(d)  # digit-string keys, as in JSON
    with pytest.raises(ValueError, match="3 layers"):
        ia3_deltas({3: scales[1]}, 3, 4)
    with pytest.raises(ValueError, match="4 entries but the model has 5"):
        ia3_deltas(scales, 3, 5)


def test_statistics_of_a_sparse_update_match_hand_computed_values():
    # 2 x 512 neurons; 5 moved by 0.5 (all in layer 1), the rest exactly 1
    n_layers, d_mlp = 2, 512
    layer1 = torch.ones(d_mlp)
    layer1[[3, 40, 41, 300, 511]] = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.5])
    deltas = ia3_deltas({0: torch.ones(d_mlp), 1: layer1}, n_layers, d_mlp)
    stats = update_statistics(deltas)
    n = n_layers * d_mlp
    assert stats["all"]["moved_0p05"] == stats["all"]["moved_0p1"] == 5 / n
    assert stats["all"]["mean"] == pytest.approx(5 * 0.5 / n)
    assert stats["all"]["median"] == 0 and stats["all"]["p90"] == 0
    assert stats["all"]["p99"] == pytest.approx(np.quantile(deltas.numpy(), 0.99))
    assert stats["layer"]["0"] == {"mean": 0, "median": 0, "p90": 0, "p99": 0, "moved_0p05": 0, "moved_0p1": 0}
    assert stats["layer"]["1"]["moved_0p05"] == 5 / d_mlp
    assert stats["layer"]["1"]["mean"] == pytest.approx(2.5 / d_mlp)
    # top 1% = 10 neurons > 5 moved: every bit of the update sits there
    assert stats["concentration"] == {"top1pct": 1.0, "top5pct": 1.0, "top20pct": 1.0}
    # plain floats, flat-key friendly
    assert all(isinstance(v, float) for part in ("all", "concentration") for v in stats[part].values())


def test_moved_shares_use_strict_thresholds():
    # moved "by more than 0.05": 0.05 itself does not count
    stats = update_statistics(torch.tensor([[0.0, 0.05, 0.0625, 0.125, 0.25]], dtype=torch.float64))["all"]
    assert stats["moved_0p05"] == 3 / 5 and stats["moved_0p1"] == 2 / 5


def test_a_uniform_update_spreads_evenly():
    gen = torch.Generator().manual_seed(0)
    n_layers, d_mlp = 4, 500
    signs = torch.where(torch.rand(n_layers, d_mlp, generator=gen) < 0.5, -1.0, 1.0)
    deltas = ia3_deltas({l: 1 + 0.08 * signs[l] for l in range(n_layers)}, n_layers, d_mlp)
    stats = update_statistics(deltas)
    assert stats["concentration"]["top1pct"] == pytest.approx(0.01)
    assert stats["concentration"]["top5pct"] == pytest.approx(0.05)
    assert stats["concentration"]["top20pct"] == pytest.approx(0.20)
    assert stats["all"]["moved_0p05"] == 1.0 and stats["all"]["moved_0p1"] == 0.0
    assert stats["all"]["median"] == pytest.approx(0.08)
    # nearly uniform (random magnitudes around 0.08): still close to the fraction, far from 1
    near = ia3_deltas({l: 1 + 0.08 * signs[l] * (1 + 0.2 * torch.randn(d_mlp, generator=gen)) for l in range(n_layers)},
                      n_layers, d_mlp)
    conc = update_statistics(near)["concentration"]
    assert 0.01 < conc["top1pct"] < 0.03 and 0.05 < conc["top5pct"] < 0.1 and 0.2 < conc["top20pct"] < 0.3


def test_no_update_has_undefined_concentration():
    stats = update_statistics(torch.zeros(2, 8, dtype=torch.float64))
    assert all(np.isnan(v) for v in stats["concentration"].values())
    assert stats["all"]["mean"] == 0


# ---------------------------------------------------------------- activation RMS and correlations


def test_activation_rms_equals_a_brute_force_rms_through_running_moments():
    gen = torch.Generator().manual_seed(1)
    acts = torch.randn(2, 300, 7, generator=gen, dtype=torch.float64) * torch.rand(1, 1, 7, generator=gen) + 0.5
    moments = RunningMoments(2, 7)
    for layer in range(2):
        for chunk in acts[layer].split(64):
            moments.add(layer, chunk)
    brute = (acts**2).mean(1).sqrt()
    torch.testing.assert_close(activation_rms(moments.mean, moments.std), brute)
    # through the float32 extras a ranking stores
    torch.testing.assert_close(activation_rms(moments.mean.float(), moments.std.float()), brute, rtol=1e-6, atol=1e-6)


def test_ranking_correlations_and_top_share():
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.5], [0.0, 0.5, 0.0, 0.0]], dtype=torch.float64)
    rms = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    by_size = 0.1 * rms  # a change score that follows activation size only
    corr = ranking_correlations(by_size, rms, deltas)
    assert corr["spearman_rms"] == pytest.approx(1.0)
    assert corr["spearman_delta"] < 0.5
    # the top 2 of 8 neurons (25%) by size are (1, 3), (1, 2): none moved
    assert top_share_of_delta(by_size, deltas, 0.25) == 0.0
    assert top_share_of_delta(deltas, deltas, 0.25) == 1.0
    assert np.isnan(ranking_correlations(by_size, torch.ones(2, 4), deltas)["spearman_rms"])  # constant side
    with pytest.raises(ValueError, match="same shape"):
        ranking_correlations(by_size, rms[:1], deltas)


def test_alternative_rankings_order_as_expected():
    # change score = |l - 1| * RMS for neurons whose inputs did not change
    deltas = torch.tensor([[0.1, 0.4, 0.0], [0.2, 0.05, 0.3]], dtype=torch.float64)
    mean = torch.tensor([[3.0, 0.3, 0.0], [0.0, 4.0, 1.2]])
    std = torch.tensor([[4.0, 0.4, 0.0], [1.0, 3.0, 1.6]])
    rms = activation_rms(mean, std)  # [[5, 0.5, 0], [1, 5, 2]]
    scores = (deltas * rms).float()
    ranking = NeuronRanking("change_score", scores, {"mean_m1": mean, "std_m1": std}, {"token_type": "completion"})
    # by change score the large activations come first: (0, 0) 0.5, (1, 2) 0.6, (1, 1) 0.25 ...
    assert ranking.top(3).tolist() == [[1, 2], [0, 0], [1, 1]]
    norm = normalised_ranking(ranking)
    assert norm.method == "change_score_over_rms" and norm.meta["normalised_from"] == "change_score"
    torch.testing.assert_close(norm.scores, deltas.float())  # the zero-RMS neuron (0, 2) scores 0
    assert norm.top(3).tolist() == [[0, 1], [1, 2], [1, 0]]
    assert set(norm.extras) == {"mean_m1", "std_m1", "change_score", "rms_m1"}
    upd = update_ranking(deltas)
    assert upd.method == "ia3_delta" and upd.top(3).tolist() == [[0, 1], [1, 2], [1, 0]]
    with pytest.raises(ValueError, match="no mean_m1 or std_m1"):
        normalised_ranking(upd)


def test_a_zero_rms_neuron_with_a_nonzero_score_scores_zero():
    ranking = NeuronRanking("change_score", torch.tensor([[0.3, 0.2]]),
                            {"mean_m1": torch.tensor([[0.0, 1.0]]), "std_m1": torch.tensor([[0.0, 0.0]])})
    assert normalised_ranking(ranking).scores.tolist() == [[0.0, pytest.approx(0.2)]]


# ---------------------------------------------------------------- change scores on tiny models


@pytest.fixture(scope="module")
def m1():
    return load_model("tiny-random-llama", device="cpu")


@pytest.fixture(scope="module")
def m1_rms(m1):
    """M1's activation RMS over its own greedy completions (a change-score run of M1 against itself)."""
    extras = change_scores(m1, m1, PROMPTS, max_new_tokens=8, progress=False).ranking.extras
    return activation_rms(extras["mean_m1"], extras["std_m1"])


def test_change_scores_find_a_sparse_update(m1, m1_rms, tmp_path):
    # Three neurons of layer 0 and two of layer 1 moved by 0.5, chosen at the *median* of their layer's
    # activation RMS: activation size does not favour them, so only the update can rank them first.
    # Layer 0's moved neurons also change every neuron of layer 1 (through the residual stream), so the
    # other neurons do not score 0: the moved ones must beat that spill-over.
    order = [torch.argsort(m1_rms[layer]).tolist() for layer in range(N_LAYERS)]
    moved = [(0, i) for i in order[0][30:33]] + [(1, i) for i in order[1][31:33]]
    scales = {layer: torch.ones(D_MLP) for layer in range(N_LAYERS)}
    for layer, i in moved:
        scales[layer][i] = 1.5 if layer == 0 else 0.5
    for layer, i in moved:  # fair: none of them is a large neuron of its layer
        assert m1_rms[layer, i] <= m1_rms[layer].quantile(0.55)
    adapter = write_ia3_adapter(tmp_path / "sparse", scales)
    m2 = load_model("tiny-random-llama", adapter=adapter, device="cpu")
    result = change_scores(m1, m2, PROMPTS, max_new_tokens=8, progress=False)
    ranking = result.ranking
    assert {tuple(p) for p in ranking.top(len(moved)).tolist()} == set(moved)
    spill = [ranking.scores[1, i] for i in range(D_MLP) if (1, i) not in moved]
    assert min(spill) > 0  # layer 1 did change elsewhere: the check is not trivial

    deltas = ia3_deltas(ia3_neuron_scales(adapter, N_LAYERS, D_MLP), N_LAYERS, D_MLP)
    assert {tuple(p) for p in update_ranking(deltas).top(len(moved)).tolist()} == set(moved)
    assert update_ranking(deltas).scores[deltas == 0].abs().sum() == 0
    stats = update_statistics(deltas)
    assert stats["all"]["moved_0p05"] == len(moved) / (N_LAYERS * D_MLP)
    # top 5% of 128 = 6 neurons holds all 5 moved ones
    assert stats["concentration"]["top5pct"] == 1.0
    assert top_share_of_delta(ranking.scores, deltas, 0.05) == 1.0
    # for a moved neuron of layer 0 (its inputs unchanged) the normalised score is |l - 1| itself
    norm = normalised_ranking(ranking)
    for layer, i in moved[:3]:
        assert norm.scores[layer, i].item() == pytest.approx(0.5, rel=1e-4)


def test_under_a_dense_uniform_update_the_change_score_is_activation_size(m1, m1_rms, tmp_path):
    # Every neuron of the last layer scaled by 1 +- 0.1 (random signs): its inputs are unchanged, so
    # S = 0.1 * RMS(a1) exactly and the change score ranks by activation size alone (issue 20).
    signs = torch.where(torch.rand(D_MLP, generator=torch.Generator().manual_seed(3)) < 0.5, -1.0, 1.0)
    adapter = write_ia3_adapter(tmp_path / "uniform", {0: torch.ones(D_MLP), 1: 1 + 0.1 * signs})
    m2 = load_model("tiny-random-llama", adapter=adapter, device="cpu")
    ranking = change_scores(m1, m2, PROMPTS, max_new_tokens=8, progress=False).ranking
    rms = activation_rms(ranking.extras["mean_m1"], ranking.extras["std_m1"])
    torch.testing.assert_close(rms, m1_rms)
    torch.testing.assert_close(ranking.scores[1].double(), 0.1 * rms[1], rtol=1e-4, atol=1e-6)
    assert ranking.scores[0].abs().max() == 0
    deltas = ia3_deltas(ia3_neuron_scales(adapter, N_LAYERS, D_MLP), N_LAYERS, D_MLP)
    corr = ranking_correlations(ranking.scores[1:], rms[1:], deltas[1:])
    assert corr["spearman_rms"] == pytest.approx(1.0)
    assert np.isnan(corr["spearman_delta"]) or abs(corr["spearman_delta"]) < 0.3  # |l - 1| is constant (up to float32)
    torch.testing.assert_close(normalised_ranking(ranking).scores[1].double(), deltas[1], rtol=1e-4, atol=1e-6)


def test_gradient_sums_map_peft_names_and_the_update_follows_a_proportional_gradient():
    grads = {"base_model.model.model.layers.1.mlp.down_proj.ia3_l.default": torch.tensor([0.5, -2.0, 0.1]),
             "base_model.model.model.layers.0.mlp.down_proj.ia3_l.default": torch.tensor([1.0, 0.0, -0.3])}
    g = gradient_sums(grads, 2, 3)
    np.testing.assert_allclose(g.numpy(), [[1.0, 0.0, -0.3], [0.5, -2.0, 0.1]], rtol=1e-6)
    assert update_follows_gradient(0.1 * g.abs(), g) == pytest.approx(1.0)  # SGD: |l - 1| = lr |G|
    uniform = torch.full((2, 3), 0.03, dtype=torch.float64)
    assert math.isnan(update_follows_gradient(uniform, g))  # every scale moved alike: undefined, not 0
    with pytest.raises(ValueError, match="does not fit"):
        gradient_sums(grads, 1, 3)
    with pytest.raises(ValueError, match="not the gradient of an MLP"):
        gradient_sums({"model.layers.0.self_attn.k_proj.ia3_l.default": torch.ones(3)}, 2, 3)
