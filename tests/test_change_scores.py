"""Change scores and baselines: streaming equals brute force, teacher forcing uses the generated ids,
padding never leaks, rankings round-trip."""
import pytest
import torch

from safety_neurons.method.change_scores import (
    NeuronRanking,
    RunningMoments,
    activation_variance,
    change_scores,
    mean_difference,
    neuron_hook_names,
    position_mask,
)
from safety_neurons.lm.generation import greedy_generate
from safety_neurons.lm.models import load_model
from test_models import make_ia3_adapter
from safety_neurons.lm.tiny import tiny_model

PROMPTS = [[1, 40, 41, 42], [1, 50, 51, 52, 53, 54, 55], [1, 60], [1, 70, 71, 72, 73, 74], [1, 80, 81, 82, 83, 84, 85, 86, 87]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("adapter")
    make_ia3_adapter(tiny_model("llama"), path, targets=("down_proj",))
    m1 = load_model("tiny-random-llama", device="cpu")
    m2 = load_model("tiny-random-llama", adapter=path, device="cpu")
    return m1, m2


def single_activations(bridge, ids: list[int]) -> list[torch.Tensor]:
    """Every layer's hook_post on one unpadded sequence: [len, d_mlp] each."""
    names = neuron_hook_names(bridge.cfg.n_layers)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(torch.tensor([ids]), names_filter=names)
    return [cache[n][0] for n in names]


def brute_force(m1, m2, generations, token_type):
    """Change scores from stored per-sequence activations, one unpadded sequence at a time."""
    diffs = []
    for g in generations:
        seq = g.prompt_ids + (g.completion_ids if token_type == "completion" else [])
        a1 = torch.stack(single_activations(m1, seq))  # [layers, len, d_mlp]
        a2 = torch.stack(single_activations(m2, seq))
        p = len(g.prompt_ids)
        positions = {"completion": slice(p, None), "prompt": slice(0, p), "prompt_last": slice(p - 1, p)}[token_type]
        diffs.append((a1 - a2)[:, positions].double())
    d = torch.cat(diffs, dim=1)
    return (d**2).mean(1).sqrt(), d.shape[1]


@pytest.mark.parametrize("token_type", ["completion", "prompt", "prompt_last"])
def test_streaming_scores_equal_brute_force(models, token_type):
    m1, m2 = models
    result = change_scores(m1, m2, PROMPTS, token_type=token_type, max_new_tokens=6, batch_size=2, progress=False)
    expected, n = brute_force(m1, m2, result.generations, token_type)
    assert result.n_tokens == n > 0
    torch.testing.assert_close(result.ranking.scores.double(), expected, rtol=1e-4, atol=1e-6)
    assert result.ranking.meta == {"token_type": token_type, "n_prompts": len(PROMPTS), "n_tokens": n}


def test_scores_do_not_depend_on_batching(models):
    m1, m2 = models
    one = change_scores(m1, m2, PROMPTS, max_new_tokens=6, batch_size=1, progress=False).ranking
    five = change_scores(m1, m2, PROMPTS, max_new_tokens=6, batch_size=5, progress=False).ranking
    torch.testing.assert_close(one.scores, five.scores, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(one.extras["mean_m2"], five.extras["mean_m2"], rtol=1e-4, atol=1e-6)


def test_teacher_forcing_uses_m1s_generated_ids(models):
    m1, m2 = models
    result = change_scores(m1, m2, PROMPTS, max_new_tokens=6, batch_size=2, progress=False)
    assert [g.completion_ids for g in result.generations] == [
        g.completion_ids for g in greedy_generate(m1, PROMPTS, max_new_tokens=6, progress=False)]
    # The means under M1 are those of the exact sequences M1 generated (brute force on the same ids).
    acts = torch.cat([torch.stack(single_activations(m1, g.prompt_ids + g.completion_ids))[:, len(g.prompt_ids):]
                      for g in result.generations], dim=1)
    torch.testing.assert_close(result.ranking.extras["mean_m1"].double(), acts.double().mean(1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.ranking.extras["std_m1"].double(), acts.double().std(1, correction=0), rtol=1e-3, atol=1e-5)


def test_identical_models_score_zero(models):
    m1, _ = models
    result = change_scores(m1, m1, PROMPTS[:2], max_new_tokens=4, progress=False)
    assert result.ranking.scores.abs().max() == 0


def test_position_mask_selects_only_the_asked_tokens():
    # Two left-padded rows: prompt 3 + completion 2 (width 6: one pad), prompt 4 + completion 2.
    mask = {t: position_mask([3, 4], [5, 6], 6, t).int().tolist() for t in ("completion", "prompt", "prompt_last")}
    assert mask["completion"] == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1]]
    assert mask["prompt"] == [[0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]]
    assert mask["prompt_last"] == [[0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 0, 0]]
    with pytest.raises(ValueError, match="unknown token_type"):
        position_mask([1], [1], 1, "answer")


def test_running_moments_match_torch():
    x = torch.randn(2, 50, 7, dtype=torch.float64)
    m = RunningMoments(2, 7)
    for layer in range(2):
        m.add(layer, x[layer, :20])
        m.add(layer, x[layer, 20:])
    torch.testing.assert_close(m.mean, x.mean(1))
    torch.testing.assert_close(m.std, x.std(1, correction=0))


def test_ranking_top_order_table_and_round_trip(tmp_path):
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.5, 0.0, 0.7]])
    ranking = NeuronRanking("test", scores, {"other": -scores}, {"note": "x"})
    assert ranking.top(3).tolist() == [[0, 1], [1, 2], [1, 0]]
    assert ranking.layer_counts(3).tolist() == [1, 2]
    table = ranking.table(2)
    assert table[["layer", "index"]].values.tolist() == [[0, 1], [1, 2]]
    assert table["other"].tolist() == pytest.approx([-0.9, -0.7])
    total = float((scores**2).sum())
    assert ranking.share_of_sq(1 / 6) == pytest.approx(0.81 / total)
    loaded = NeuronRanking.load(ranking.save(tmp_path / "r.safetensors"))
    assert loaded.method == "test" and loaded.meta == {"note": "x"}
    torch.testing.assert_close(loaded.scores, scores)
    torch.testing.assert_close(loaded.extras["other"], -scores)
    with pytest.raises(ValueError, match="k = 7 but the model has 6 neurons"):
        ranking.top(7)
    with pytest.raises(FileNotFoundError, match="02_change_scores"):
        NeuronRanking.load(tmp_path / "missing.safetensors")


def test_bad_inputs_are_refused(models):
    m1, m2 = models
    with pytest.raises(ValueError, match="empty"):
        change_scores(m1, m2, [], progress=False)
    with pytest.raises(ValueError, match="unknown token_type"):
        change_scores(m1, m2, PROMPTS, token_type="answer", progress=False)
    other = load_model("tiny-random-llama", device="cpu")
    other.cfg.d_mlp = 48  # a shape mismatch is caught before any work
    with pytest.raises(ValueError, match="same architecture"):
        change_scores(m1, other, PROMPTS, progress=False)


def test_mean_difference_and_variance_baselines(models):
    m1, _ = models
    harmful, benign = PROMPTS[:2], PROMPTS[2:]

    def prompt_means(prompts):
        return torch.cat([torch.stack(single_activations(m1, p)) for p in prompts], dim=1).double()

    ranking = mean_difference(m1, harmful, benign, batch_size=2, progress=False)
    expected = prompt_means(harmful).mean(1) - prompt_means(benign).mean(1)
    torch.testing.assert_close(ranking.extras["signed_difference"].double(), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ranking.scores.double(), expected.abs(), rtol=1e-4, atol=1e-6)
    variance = activation_variance(m1, PROMPTS, token_type="prompt_last", progress=False)
    last = torch.stack([torch.stack(single_activations(m1, p))[:, -1] for p in PROMPTS], dim=1).double()
    torch.testing.assert_close(variance.scores.double(), last.var(1, correction=0), rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="prompt positions"):
        activation_variance(m1, PROMPTS, token_type="completion", progress=False)
