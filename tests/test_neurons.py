"""Neuron sets: k from a percentage, top-k of a ranking, layer-matched random neurons."""
import numpy as np
import pytest
import torch

from safety_neurons.method.neurons import k_from_percent, random_neurons, top_k


def test_k_from_percent_and_top_k():
    assert k_from_percent(5, 46080) == 2304
    assert k_from_percent(15, 10) == 2  # halves round up
    assert k_from_percent(2, 10) == 0
    assert k_from_percent(100, 128) == 128
    with pytest.raises(ValueError, match="k = 13.*than the model's 12 neurons"):
        k_from_percent(110, 12)
    ranking = [(1, 5), (0, 2), (1, 0)]
    assert top_k(ranking, 2) == [(1, 5), (0, 2)]
    assert top_k(np.array(ranking), 0) == []
    with pytest.raises(ValueError, match="k = 4 is larger than the ranking, which has 3 neurons"):
        top_k(ranking, 4)

    class Ranking:  # the interface of change_scores.NeuronRanking
        n_neurons = 3

        def top(self, k):
            return torch.tensor(ranking[:k])

    assert top_k(Ranking(), 2) == [(1, 5), (0, 2)]
    with pytest.raises(ValueError, match="k = 4 is larger than the ranking, which has 3 neurons"):
        top_k(Ranking(), 4)


def test_random_neurons_match_per_layer_counts_are_seeded_and_unique():
    chosen = [(0, 1), (0, 2), (0, 3), (2, 7), (5, 0), (5, 1)]
    a = random_neurons(chosen, d_mlp=10, seed=0)
    assert random_neurons(np.array(chosen), d_mlp=10, seed=0) == a
    assert random_neurons(chosen, d_mlp=10, seed=1) != a
    counts = lambda pairs: {layer: sum(1 for l, _ in pairs if l == layer) for layer, _ in pairs}  # noqa: E731
    assert counts(a) == counts(chosen) == {0: 3, 2: 1, 5: 2}
    assert len(set(a)) == len(a) and all(0 <= i < 10 for _, i in a)
    full = random_neurons([(3, i) for i in range(10)], d_mlp=10, seed=4)
    assert sorted(full) == [(3, i) for i in range(10)]  # a whole layer draws the whole layer
    assert random_neurons([], d_mlp=10, seed=0) == []
    # uniform within the layer: over many seeds every index gets drawn
    seen = {i for s in range(200) for _, i in random_neurons([(0, 0)], d_mlp=10, seed=s)}
    assert seen == set(range(10))
