"""The safeguard: predict, before generating, whether a model's answer to a prompt will be unsafe.

The paper's application of safety neurons: the top-k safety neurons' activations at the LAST PROMPT
TOKEN of the guarded model (where it decides how to answer) feed a logistic regression
(StandardScaler + LogisticRegression) that estimates the probability the answer will be unsafe. One
forward pass over the prompt, no generation, so a harmful request can be refused before any token of
the answer exists.

Labels: 1 (unsafe) when the guarded model's own greedy answer to a harmful prompt is judged unsafe,
0 when it is judged safe. The caller computes them (greedy generation and a judge); this module
never generates.

A neuron is one coordinate of `blocks.{l}.mlp.hook_post`, named (layer, index). Activation matrices
have one row per prompt and one column per neuron, column = layer * d_mlp + index: the flat order of
`NeuronRanking.order()`.

A fitted safeguard is stored as two plain files, no pickle: `safeguard.json` (neurons, model shape
and identity, threshold) and `safeguard.npz` (the scaler's and the regression's arrays). Its
probabilities are computed from those arrays with sklearn's own formulas, so a loaded safeguard gives
exactly the fitted one's numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.special import expit
from tqdm.auto import tqdm

from ..io import atomic_path, read_json, sha256_file, write_json_atomic
from ..lm.generation import checked_prompt_ids, hf_and_device, left_pad, pad_token_id, position_ids
from ..lm.memory import BatchSize, fitted_forward_batches
from ..lm.models import base_fingerprint, model_shape
from .neurons import Neuron, NeuronsLike, as_neuron_list, group_by_layer, post_hook_names

META_FILE = "safeguard.json"
ARRAYS_FILE = "safeguard.npz"
FORMAT_VERSION = 1
# Label 1 is "unsafe": its probability is the safeguard's output.
CLASSES = np.array([0, 1])
ARRAY_NAMES = ("scaler_mean_", "scaler_scale_", "coef_", "intercept_", "classes_")


# ----------------------------------------------------------------------------------------------
# the feature pass: hook_post at the last prompt token
# ----------------------------------------------------------------------------------------------


class _EnoughLayers(Exception):
    """Raised by the deepest hook: nothing after it is needed, so the forward stops there."""


@torch.inference_mode()
def _last_token_values(bridge, prompt_ids: Sequence[Sequence[int]], picks: dict[int, torch.Tensor | None], *,
                       batch_size: BatchSize, progress: bool, desc: str) -> np.ndarray:
    """[n_prompts, width] float32: for each layer of `picks` in increasing order, its hook_post at
    each prompt's last token, restricted to the neuron indices picks[layer] (None: every neuron).

    One forward per batch of similar-length prompts, left-padded with explicit position ids (so
    padding changes nothing), on the HF decoder only; it stops at the deepest picked layer."""
    prompts = checked_prompt_ids(prompt_ids, "prompts to read activations from")
    hf, device = hf_and_device(bridge)
    batches = fitted_forward_batches(batch_size, hf, [len(p) for p in prompts])
    layers = sorted(picks)
    names = post_hook_names(bridge, layers)
    picks_on_device = {layer: None if idx is None else idx.to(device) for layer, idx in picks.items()}
    captured: dict[int, torch.Tensor] = {}

    def capture(layer: int):
        def hook(act: torch.Tensor, hook=None):
            # Left padding puts every row's last real token in the last column.
            values = act[:, -1]
            idx = picks_on_device[layer]
            captured[layer] = values.clone() if idx is None else values.index_select(-1, idx)
            if layer == layers[-1]:
                raise _EnoughLayers
            return None

        return hook

    d_mlp = model_shape(bridge).d_mlp
    width = sum(d_mlp if idx is None else idx.numel() for idx in picks.values())
    out = np.empty((len(prompts), width), dtype=np.float32)
    pad_id = pad_token_id(bridge.tokenizer)
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress)
    with bridge.hooks(fwd_hooks=[(names[layer], capture(layer)) for layer in layers]):
        for rows in batches:
            ids, mask = left_pad([prompts[i] for i in rows], pad_id)
            captured.clear()
            try:
                hf.model(input_ids=ids.to(device), attention_mask=mask.to(device),
                         position_ids=position_ids(mask).to(device), use_cache=False)
            except _EnoughLayers:
                pass
            else:
                raise RuntimeError(f"the hook on {names[layers[-1]]} never fired: the bridge's hooks do not reach its HF model")
            out[rows] = torch.cat([captured[layer] for layer in layers], dim=1).float().cpu().numpy()
            bar.update(len(rows))
    bar.close()
    return out


def last_token_activations(bridge, prompt_ids: list[list[int]], *, batch_size: BatchSize = 16,
                           layers: Sequence[int] | None = None, progress: bool = True,
                           desc: str = "last-token activations") -> np.ndarray:
    """Every neuron's hook_post at each prompt's last token: [n_prompts, len(layers) * d_mlp] float32.

    With all layers (the default) column = layer * d_mlp + index, NeuronRanking's flat order: the
    matrix a Safeguard is fitted on. With `layers` the blocks follow the sorted distinct layers and
    the forward stops after the deepest one. Batching and padding do not change the values."""
    shape = model_shape(bridge)
    chosen = range(shape.n_layers) if layers is None else sorted({int(layer) for layer in layers})
    if not chosen:
        raise ValueError("no layers chosen: pass layers=None for all of them")
    bad = [layer for layer in chosen if not 0 <= layer < shape.n_layers]
    if bad:
        raise ValueError(f"layer {bad[0]} is out of range: the model has layers 0-{shape.n_layers - 1}")
    return _last_token_values(bridge, prompt_ids, {layer: None for layer in chosen}, batch_size=batch_size,
                              progress=progress, desc=desc)


# ----------------------------------------------------------------------------------------------
# neuron columns
# ----------------------------------------------------------------------------------------------


def neuron_columns(neurons: NeuronsLike, n_layers: int, d_mlp: int) -> np.ndarray:
    """Flat column indices (layer * d_mlp + index) of (layer, index) neurons in an activation
    matrix of all layers; checked against the shape, duplicates dropped (first kept)."""
    pairs = np.array(as_neuron_list(neurons, n_layers, d_mlp), dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0] * d_mlp + pairs[:, 1]


def random_last_layer_neurons(k: int, n_layers: int, d_mlp: int, seed: int) -> list[Neuron]:
    """k distinct neurons of the last layer drawn uniformly (sorted), deterministic in `seed`: the
    paper's random baseline for the safeguard's features."""
    if not 0 <= k <= d_mlp:
        raise ValueError(f"cannot draw k = {k} distinct neurons from the last layer, which has {d_mlp}: choose 0 <= k <= {d_mlp}")
    drawn = np.sort(np.random.default_rng(seed).choice(d_mlp, size=k, replace=False))
    return [(n_layers - 1, int(i)) for i in drawn]


# ----------------------------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------------------------


def _binary_labels(labels, what: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{what} must be one label per prompt (a 1-D array), got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{what} must be 0 (safe) or 1 (unsafe); got values {np.unique(y)[:5].tolist()}")
    return y.astype(np.int64)


def classification_scores(y_true, proba, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy and F1 (unsafe = positive) of `proba >= threshold`, and AUROC of `proba`.

    AUROC is undefined when y_true holds one class only: NaN then, so a small test split gives a
    number to report rather than an exception."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    y = _binary_labels(y_true, "y_true")
    p = np.asarray(proba, dtype=np.float64).reshape(-1)
    if y.size == 0:
        raise ValueError("no labels to score: the test set is empty")
    if p.shape != y.shape:
        raise ValueError(f"{p.size} probabilities for {y.size} labels: give one per prompt")
    predicted = _flag(p, threshold)
    auroc = float(roc_auc_score(y, p)) if np.unique(y).size == 2 else float("nan")
    return {"accuracy": float(accuracy_score(y, predicted)), "f1": float(f1_score(y, predicted, zero_division=0.0)),
            "auroc": auroc}


def majority_scores(y_train, y_test) -> dict[str, float]:
    """classification_scores of always answering the training labels' majority class (ties: safe).

    The baseline a safeguard must beat: on skewed sets accuracy alone flatters any classifier.
    A constant score ranks nothing, so AUROC is 0.5 (NaN if y_test holds one class)."""
    y_train = _binary_labels(y_train, "y_train")
    if y_train.size == 0:
        raise ValueError("no training labels: the majority class is undefined")
    majority = int(np.argmax(np.bincount(y_train, minlength=2)))
    y_test = _binary_labels(y_test, "y_test")
    return classification_scores(y_test, np.full(y_test.shape, float(majority)))


def _flag(proba: np.ndarray, threshold: float) -> np.ndarray:
    return proba >= threshold


# ----------------------------------------------------------------------------------------------
# the classifier
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Safeguard:
    """A fitted StandardScaler + LogisticRegression on the last-token activations of `neurons`.

    Arrays have sklearn's shapes: scaler_mean / scaler_scale [k], coef [1, k], intercept [1].
    `model_name` and `fingerprint` (`base_fingerprint(bridge)` of the guarded model) say which model
    the activations came from: another model's activations mean nothing to this classifier."""

    neurons: list[Neuron]
    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    n_layers: int
    d_mlp: int
    model_name: str | None = None
    fingerprint: str | None = None
    threshold: float = 0.5
    sklearn_version: str = ""
    columns: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.neurons = as_neuron_list(self.neurons, self.n_layers, self.d_mlp)
        k = len(self.neurons)
        if k == 0:
            raise ValueError("a safeguard needs at least one neuron")
        self.scaler_mean = np.asarray(self.scaler_mean, dtype=np.float64)
        self.scaler_scale = np.asarray(self.scaler_scale, dtype=np.float64)
        self.coef = np.asarray(self.coef, dtype=np.float64)
        self.intercept = np.asarray(self.intercept, dtype=np.float64)
        expected = {"scaler_mean": (k,), "scaler_scale": (k,), "coef": (1, k), "intercept": (1,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} has shape {getattr(self, name).shape} but {k} neurons need {shape}")
        self.columns = neuron_columns(self.neurons, self.n_layers, self.d_mlp)

    @classmethod
    def fit(cls, activations: np.ndarray, labels, neurons: NeuronsLike, *, n_layers: int, d_mlp: int,
            model_name: str | None = None, fingerprint: str | None = None, C: float = 1.0, seed: int = 0) -> "Safeguard":
        """Fit on the full activation matrix [n, n_layers * d_mlp] (`last_token_activations`) and
        0/1 labels (1: the answer was unsafe), using the columns of `neurons` only."""
        import sklearn
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        acts = _activation_matrix(activations, n_layers, d_mlp)
        y = _binary_labels(labels)
        if acts.shape[0] == 0 or y.size == 0:
            raise ValueError("the training set is empty: fit needs prompts with activations and labels")
        if acts.shape[0] != y.size:
            raise ValueError(f"{acts.shape[0]} activation rows but {y.size} labels: give one label per prompt")
        counts = np.bincount(y, minlength=2)
        if counts.min() == 0:
            only = "unsafe (1)" if counts[1] else "safe (0)"
            raise ValueError(f"all {y.size} training labels are {only}: a classifier needs both classes. "
                             "Add prompts whose answers are both safe and unsafe.")
        pairs = as_neuron_list(neurons, n_layers, d_mlp)
        if not pairs:
            raise ValueError("no neurons given: the safeguard needs at least one (layer, index) feature")
        features = acts[:, neuron_columns(pairs, n_layers, d_mlp)].astype(np.float64)
        # lbfgs on separable data can need more than the default 100 iterations.
        pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000, random_state=seed))
        pipeline.fit(features, y)
        scaler, logistic = pipeline[0], pipeline[1]
        return cls(pairs, scaler.mean_, scaler.scale_, logistic.coef_, logistic.intercept_, n_layers, d_mlp,
                   model_name=model_name, fingerprint=fingerprint, sklearn_version=sklearn.__version__)

    # ------------------------------------------------------------------ prediction

    def _proba_from_features(self, features: np.ndarray) -> np.ndarray:
        # sklearn's StandardScaler.transform and LogisticRegression.predict_proba, operation for operation.
        scaled = (features - self.scaler_mean) / self.scaler_scale
        return expit((scaled @ self.coef.T + self.intercept).reshape(-1))

    def predict_proba_from_activations(self, acts: np.ndarray) -> np.ndarray:
        """P(unsafe) per row of an activation matrix of all layers (a 1-D array is one prompt)."""
        matrix = _activation_matrix(np.atleast_2d(acts), self.n_layers, self.d_mlp)
        return self._proba_from_features(matrix[:, self.columns].astype(np.float64))

    def predict_from_activations(self, acts: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """True where P(unsafe) >= threshold (default: the safeguard's own threshold)."""
        return _flag(self.predict_proba_from_activations(acts), self.threshold if threshold is None else threshold)

    def predict_proba(self, bridge, prompt_ids: list[list[int]], *, batch_size: BatchSize = 16, progress: bool = False) -> np.ndarray:
        """P(unsafe) per prompt, from one forward pass that hooks only the neurons' layers and stops
        after the deepest one."""
        self.check_model(bridge)
        groups = group_by_layer(self.neurons)
        picks = {layer: torch.tensor(idx, dtype=torch.long) for layer, idx in groups.items()}
        values = _last_token_values(bridge, prompt_ids, picks, batch_size=batch_size, progress=progress, desc="safeguard")
        # _last_token_values returns the neurons in (layer, index) order; the features follow self.neurons.
        position = {pair: j for j, pair in enumerate((layer, i) for layer, idx in groups.items() for i in idx)}
        features = values[:, [position[pair] for pair in self.neurons]].astype(np.float64)
        return self._proba_from_features(features)

    def predict(self, bridge, prompt_ids: list[list[int]], *, threshold: float | None = None, batch_size: BatchSize = 16,
                progress: bool = False) -> np.ndarray:
        """True for the prompts whose answers the safeguard expects to be unsafe."""
        proba = self.predict_proba(bridge, prompt_ids, batch_size=batch_size, progress=progress)
        return _flag(proba, self.threshold if threshold is None else threshold)

    def check_model(self, bridge) -> None:
        """Refuse a model other than the one the safeguard was fitted on (shape, then weights)."""
        shape = model_shape(bridge)
        if (shape.n_layers, shape.d_mlp) != (self.n_layers, self.d_mlp):
            raise ValueError(
                f"this safeguard was fitted on a model of {self.n_layers} layers x {self.d_mlp} neurons "
                f"({self.model_name or 'name not recorded'}) but this model has {shape.n_layers} x {shape.d_mlp}: "
                "fit a safeguard on the model you guard"
            )
        if self.fingerprint is not None and base_fingerprint(bridge) != self.fingerprint:
            raise ValueError(
                f"this safeguard was fitted on {self.model_name or 'another model'} (fingerprint {self.fingerprint}); "
                "this model's weights differ (another checkpoint, another adapter, or the same weights in another "
                "dtype): fit a safeguard on the model you guard"
            )

    # ------------------------------------------------------------------ files

    def save(self, directory: str | Path) -> Path:
        """Write safeguard.npz (plain arrays) then safeguard.json (which records the arrays' sha256,
        so a half-overwritten pair is detected on load), each atomically. Returns the folder."""
        folder = Path(directory)
        arrays = {"scaler_mean_": self.scaler_mean, "scaler_scale_": self.scaler_scale, "coef_": self.coef,
                  "intercept_": self.intercept, "classes_": CLASSES}
        with atomic_path(folder / ARRAYS_FILE, suffix=".npz") as tmp, open(tmp, "wb") as fh:
            # A file object, not a name: np.savez would append ".npz" to the temporary name.
            np.savez(fh, **arrays)
        meta = {
            "format_version": FORMAT_VERSION,
            "neurons": [list(pair) for pair in self.neurons],
            "n_layers": self.n_layers,
            "d_mlp": self.d_mlp,
            "model": {"name": self.model_name, "fingerprint": self.fingerprint},
            "threshold": self.threshold,
            "sklearn_version": self.sklearn_version,
            "arrays_sha256": sha256_file(folder / ARRAYS_FILE),
        }
        write_json_atomic(folder / META_FILE, meta)
        return folder

    @classmethod
    def load(cls, directory: str | Path) -> "Safeguard":
        """The safeguard saved in `directory`, giving exactly the saved one's probabilities."""
        folder = Path(directory)
        for name in (META_FILE, ARRAYS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} has no {name}: not a saved safeguard, or its save was interrupted "
                                        "(fit and save it again)")
        meta = read_json(folder / META_FILE)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{folder / META_FILE} has format version {meta.get('format_version')!r}; "
                             f"this code reads version {FORMAT_VERSION}")
        if sha256_file(folder / ARRAYS_FILE) != meta["arrays_sha256"]:
            raise ValueError(f"{folder / ARRAYS_FILE} is not the file {META_FILE} was saved with "
                             "(an interrupted or mixed save): save the safeguard again")
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as npz:
            missing = [name for name in ARRAY_NAMES if name not in npz.files]
            if missing:
                raise ValueError(f"{folder / ARRAYS_FILE} lacks the arrays {', '.join(missing)}")
            arrays = {name: npz[name] for name in ARRAY_NAMES}
        if not np.array_equal(arrays["classes_"], CLASSES):
            raise ValueError(f"{folder / ARRAYS_FILE} has classes {arrays['classes_'].tolist()}, expected [0, 1]")
        model = meta.get("model") or {}
        return cls([tuple(pair) for pair in meta["neurons"]], arrays["scaler_mean_"], arrays["scaler_scale_"],
                   arrays["coef_"], arrays["intercept_"], int(meta["n_layers"]), int(meta["d_mlp"]),
                   model_name=model.get("name"), fingerprint=model.get("fingerprint"),
                   threshold=float(meta["threshold"]), sklearn_version=meta.get("sklearn_version", ""))


def _activation_matrix(activations: np.ndarray, n_layers: int, d_mlp: int) -> np.ndarray:
    """`activations` as an array [n, n_layers * d_mlp], with an error naming what to pass instead.
    Not cast here: callers cast only the k columns they use (a row of a real model has ~10^5)."""
    acts = np.asarray(activations)
    width = n_layers * d_mlp
    if acts.ndim != 2 or acts.shape[1] != width:
        raise ValueError(f"activations of shape {acts.shape} do not fit a model of {n_layers} layers x {d_mlp} neurons: "
                         f"pass last_token_activations of all layers, shape [n_prompts, {width}]")
    return acts
