"""The safeguard on a tiny fp32 model: last-token activations, fitting, files, errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from safety_neurons.lm.models import base_fingerprint, load_model, to_bridge
from safety_neurons.method.change_scores import NeuronRanking
from safety_neurons.method.safeguard import (
    ARRAYS_FILE,
    META_FILE,
    Safeguard,
    classification_scores,
    last_token_activations,
    majority_scores,
    neuron_columns,
    random_last_layer_neurons,
)
from safety_neurons.lm.tiny import tiny_model, tiny_tokenizer

N_LAYERS, D_MLP = 2, 64
# random byte prompts of 3 to 12 tokens: batches of them are left-padded
PROMPTS = [p.tolist() for p in (np.random.default_rng(0).integers(3, 259, size=n)
                                for n in np.random.default_rng(1).integers(3, 13, size=60))]
TRAIN, TEST = slice(0, 40), slice(40, 60)
LABEL_NEURON = (0, 10)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bridge():
    return load_model("tiny-random-llama", device="cpu")


@pytest.fixture(scope="module")
def acts(bridge):
    return last_token_activations(bridge, PROMPTS, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def labels(acts):
    """Synthetic 'unsafe' labels: the label neuron above its median, so both classes are present."""
    col = acts[:, neuron_columns([LABEL_NEURON], N_LAYERS, D_MLP)[0]]
    return (col > np.median(col)).astype(int)


@pytest.fixture(scope="module")
def safeguard(bridge, acts, labels):
    return Safeguard.fit(acts[TRAIN], labels[TRAIN], [LABEL_NEURON, (1, 5), (1, 9)], n_layers=N_LAYERS, d_mlp=D_MLP,
                         model_name="tiny-random-llama", fingerprint=base_fingerprint(bridge), C=100.0)


# ---------------------------------------------------------------- the feature pass


def test_last_token_activations_do_not_depend_on_batch_size_or_padding(bridge, acts):
    assert acts.shape == (len(PROMPTS), N_LAYERS * D_MLP) and acts.dtype == np.float32
    for batch_size in (1, 5, len(PROMPTS)):  # one prompt per batch: no padding at all
        other = last_token_activations(bridge, PROMPTS, batch_size=batch_size, progress=False)
        np.testing.assert_allclose(other, acts, rtol=1e-5, atol=1e-5)


def test_last_token_activations_match_run_with_cache_one_prompt_at_a_time(bridge, acts):
    for row in (0, 7, 31):
        _, cache = bridge.run_with_cache(torch.tensor([PROMPTS[row]]))
        expected = np.concatenate([cache[f"blocks.{layer}.mlp.hook_post"][0, -1].numpy() for layer in range(N_LAYERS)])
        np.testing.assert_allclose(acts[row], expected, rtol=1e-5, atol=1e-5)
    # a subset of layers is the same block of the full matrix
    layer1 = last_token_activations(bridge, PROMPTS[:8], layers=[1], progress=False)
    np.testing.assert_allclose(layer1, acts[:8, D_MLP:], rtol=1e-5, atol=1e-5)


def test_neuron_columns_follow_neuron_rankings_flat_order():
    ranking = NeuronRanking("test", torch.randn(N_LAYERS, D_MLP, generator=torch.Generator().manual_seed(0)))
    np.testing.assert_array_equal(neuron_columns(ranking.top(20), N_LAYERS, D_MLP), ranking.order()[:20].numpy())
    assert neuron_columns([(1, 3), (0, 63)], N_LAYERS, D_MLP).tolist() == [67, 63]


def test_random_last_layer_neurons_are_distinct_seeded_and_bounded():
    drawn = random_last_layer_neurons(10, N_LAYERS, D_MLP, seed=3)
    assert len(set(drawn)) == 10 and all(layer == N_LAYERS - 1 for layer, _ in drawn)
    assert drawn == random_last_layer_neurons(10, N_LAYERS, D_MLP, seed=3)
    assert drawn != random_last_layer_neurons(10, N_LAYERS, D_MLP, seed=4)
    with pytest.raises(ValueError, match="k = 65 distinct neurons from the last layer, which has 64"):
        random_last_layer_neurons(65, N_LAYERS, D_MLP, seed=0)


# ---------------------------------------------------------------- scores


def test_classification_and_majority_scores():
    scores = classification_scores([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9])
    assert scores == {"accuracy": 0.75, "f1": pytest.approx(0.8), "auroc": 1.0}
    assert np.isnan(classification_scores([1, 1], [0.2, 0.9])["auroc"])  # one class: no AUROC, no exception
    majority = majority_scores([1, 1, 0], [1, 0, 1, 1])
    assert majority == {"accuracy": 0.75, "f1": pytest.approx(6 / 7), "auroc": 0.5}


# ---------------------------------------------------------------- fitting and predicting


def test_fit_finds_the_label_neuron_and_beats_random_columns(acts, labels, safeguard):
    learned = classification_scores(labels[TEST], safeguard.predict_proba_from_activations(acts[TEST]))
    assert learned["accuracy"] >= 0.95 and learned["auroc"] == 1.0
    # In a 2-layer random model every last-token neuron carries some of the label neuron's signal, so
    # one random draw can do well too: compare with the mean over ten draws of as many neurons.
    random_accuracies = []
    for seed in range(10):
        random_columns = Safeguard.fit(acts[TRAIN], labels[TRAIN], random_last_layer_neurons(3, N_LAYERS, D_MLP, seed),
                                       n_layers=N_LAYERS, d_mlp=D_MLP, C=100.0)
        proba = random_columns.predict_proba_from_activations(acts[TEST])
        random_accuracies.append(classification_scores(labels[TEST], proba)["accuracy"])
    assert np.mean(random_accuracies) <= learned["accuracy"] - 0.2
    assert safeguard.predict_from_activations(acts[TEST]).tolist() == (labels[TEST] == 1).tolist()


def test_probabilities_are_those_of_the_sklearn_pipeline(acts, labels, safeguard):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    columns = neuron_columns(safeguard.neurons, N_LAYERS, D_MLP)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=100.0, max_iter=1000, random_state=0))
    pipeline.fit(acts[TRAIN][:, columns].astype(np.float64), labels[TRAIN])
    np.testing.assert_allclose(safeguard.predict_proba_from_activations(acts),
                               pipeline.predict_proba(acts[:, columns].astype(np.float64))[:, 1], rtol=1e-12)


def test_predicting_on_the_model_equals_predicting_from_activations(bridge, acts, safeguard):
    proba = safeguard.predict_proba(bridge, PROMPTS, batch_size=7)
    np.testing.assert_allclose(proba, safeguard.predict_proba_from_activations(acts), rtol=1e-5, atol=1e-6)
    assert safeguard.predict(bridge, PROMPTS[:5]).tolist() == safeguard.predict_from_activations(acts[:5]).tolist()


def test_a_layer_0_safeguard_stops_the_forward_after_layer_0(bridge, acts, labels):
    layer0 = Safeguard.fit(acts, labels, [(0, 1), (0, 2)], n_layers=N_LAYERS, d_mlp=D_MLP)
    reached = []
    handle = bridge.original_model.model.layers[1].register_forward_pre_hook(lambda *_: reached.append(True))
    try:
        proba = layer0.predict_proba(bridge, PROMPTS[:6])
    finally:
        handle.remove()
    assert reached == []
    np.testing.assert_allclose(proba, layer0.predict_proba_from_activations(acts[:6]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- files


def test_save_and_load_give_identical_probabilities_from_plain_files(acts, safeguard, tmp_path):
    safeguard.save(tmp_path)
    loaded = Safeguard.load(tmp_path)
    np.testing.assert_allclose(loaded.predict_proba_from_activations(acts), safeguard.predict_proba_from_activations(acts),
                               rtol=1e-12)
    assert (loaded.neurons, loaded.model_name, loaded.fingerprint) == (safeguard.neurons, "tiny-random-llama", safeguard.fingerprint)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["neurons"] == [[0, 10], [1, 5], [1, 9]] and meta["threshold"] == 0.5 and meta["sklearn_version"]
    with np.load(tmp_path / ARRAYS_FILE, allow_pickle=False) as npz:  # raises if anything needs unpickling
        assert all(npz[name].dtype != object for name in npz.files)
        assert npz["coef_"].shape == (1, 3) and npz["classes_"].tolist() == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [META_FILE, ARRAYS_FILE]  # no temporary files left


def test_a_fresh_process_loads_the_safeguard_and_predicts_the_same(acts, safeguard, tmp_path):
    safeguard.save(tmp_path / "sg")
    np.save(tmp_path / "acts.npy", acts)
    code = ("import json, sys, numpy as np; from safety_neurons.method.safeguard import Safeguard; "
            "sg = Safeguard.load(sys.argv[1]); "
            "print(json.dumps(sg.predict_proba_from_activations(np.load(sys.argv[2])).tolist()))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "sg"), str(tmp_path / "acts.npy")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(json.loads(done.stdout), safeguard.predict_proba_from_activations(acts), rtol=1e-12)


def test_loading_an_incomplete_or_mixed_folder_fails_clearly(safeguard, tmp_path):
    with pytest.raises(FileNotFoundError, match=META_FILE):
        Safeguard.load(tmp_path)
    safeguard.save(tmp_path)
    (tmp_path / ARRAYS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=ARRAYS_FILE):
        Safeguard.load(tmp_path)
    safeguard.save(tmp_path)
    other = Safeguard(safeguard.neurons, safeguard.scaler_mean, safeguard.scaler_scale, -safeguard.coef, safeguard.intercept,
                      N_LAYERS, D_MLP)
    other.save(tmp_path / "other")
    (tmp_path / "other" / ARRAYS_FILE).replace(tmp_path / ARRAYS_FILE)
    with pytest.raises(ValueError, match="not the file safeguard.json was saved with"):
        Safeguard.load(tmp_path)


# ---------------------------------------------------------------- errors


def test_fit_refuses_what_it_cannot_learn_from(acts, labels):
    fit = lambda a, y, neurons=((0, 1),): Safeguard.fit(a, y, neurons, n_layers=N_LAYERS, d_mlp=D_MLP)  # noqa: E731
    with pytest.raises(ValueError, match="all 40 training labels are safe.*Add prompts whose answers are both safe and unsafe"):
        fit(acts[:40], np.zeros(40, dtype=int))
    with pytest.raises(ValueError, match="training set is empty"):
        fit(acts[:0], [])
    with pytest.raises(ValueError, match="40 activation rows but 39 labels"):
        fit(acts[:40], labels[:39])
    with pytest.raises(ValueError, match=r"neuron \(layer 2, index 0\) is out of range"):
        fit(acts, labels, [(0, 1), (2, 0)])
    with pytest.raises(ValueError, match=r"index 64\) is out of range"):
        fit(acts, labels, [(1, 64)])
    with pytest.raises(ValueError, match=r"do not fit a model of 2 layers x 64 neurons"):
        fit(acts[:, :D_MLP], labels)


def test_the_safeguard_refuses_another_model(safeguard, acts):
    deeper = to_bridge(tiny_model("llama", n_layers=3), tiny_tokenizer())
    with pytest.raises(ValueError, match="fitted on a model of 2 layers x 64 neurons .* this model has 3 x 64"):
        safeguard.predict_proba(deeper, PROMPTS[:2])
    reseeded = to_bridge(tiny_model("llama", seed=1), tiny_tokenizer())  # same shape, other weights
    with pytest.raises(ValueError, match="weights differ"):
        safeguard.predict(reseeded, PROMPTS[:2])
    with pytest.raises(ValueError, match="do not fit a model of 2 layers x 64 neurons"):
        safeguard.predict_proba_from_activations(np.zeros((1, 3 * D_MLP)))
