"""Dynamic activation patching on tiny fp32 models: M1 = tiny base, M2 = base + random (IA)^3 on down_proj."""
import numpy as np
import pytest
import torch

from safety_neurons.lm.generation import greedy_generate
from safety_neurons.lm.models import ModelLoadError, load_model, to_bridge
from safety_neurons.lm.tiny import tiny_model, tiny_tokenizer
from safety_neurons.method.neurons import as_neuron_list
from safety_neurons.method.patching import ablated_generate, fast_patched_generate, SharedM2Prefill, ia3_neuron_scales, patched_generate
from test_models import make_ia3_adapter

N_LAYERS, D_MLP = 2, 64
ALL = [(layer, i) for layer in range(N_LAYERS) for i in range(D_MLP)]
# different lengths, so batches are left-padded
PROMPTS = [
    [1, 40, 41, 42, 43, 44, 45, 46, 47, 48],
    [1, 50, 51],
    [1, 60, 61, 62, 63, 64],
    [1, 70],
    [5, 6, 7, 8, 9, 10, 11],
    [1, 80, 81, 82],
]
NEW = 12
SUBSETS = {
    "layer0-few": [(0, 3), (0, 17), (0, 40), (0, 41)],
    "across-layers": ALL[::5],
    "half": ALL[::2],
    "layer1-all": [(1, i) for i in range(D_MLP)],
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scales(adapter):
    return ia3_neuron_scales(adapter, N_LAYERS, D_MLP)


@pytest.fixture(scope="module")
def greedy(m1, m2):
    g1 = greedy_generate(m1, PROMPTS, max_new_tokens=NEW, batch_size=4, progress=False)
    g2 = greedy_generate(m2, PROMPTS, max_new_tokens=NEW, batch_size=4, progress=False)
    # the test is only meaningful if the two models answer differently
    assert all(a.completion_ids != b.completion_ids for a, b in zip(g1, g2))
    return g1, g2


def ids(gens):
    return [g.completion_ids for g in gens]


def test_patching_all_neurons_of_all_layers_reproduces_m2(m1, m2, greedy):
    out = patched_generate(m1, m2, PROMPTS, ALL, max_new_tokens=NEW, batch_size=4, progress=False)
    assert ids(out) == ids(greedy[1])
    assert [g.text for g in out] == [g.text for g in greedy[1]]
    assert [g.prompt_ids for g in out] == PROMPTS


def test_fast_path_with_all_neurons_reproduces_m2(m1, scales, greedy):
    out = fast_patched_generate(m1, scales, PROMPTS, np.array(ALL), max_new_tokens=NEW, batch_size=4, progress=False)
    assert ids(out) == ids(greedy[1])


def test_k0_reproduces_m1_greedy_generate(m1, m2, scales, greedy):
    assert ids(patched_generate(m1, m2, PROMPTS, [], max_new_tokens=NEW, batch_size=4, progress=False)) == ids(greedy[0])
    assert ids(fast_patched_generate(m1, scales, PROMPTS, [], max_new_tokens=NEW, batch_size=4, progress=False)) == ids(greedy[0])


def test_fast_path_equals_two_model_path(m1, m2, scales, greedy):
    changed = 0
    for name, subset in SUBSETS.items():
        two = patched_generate(m1, m2, PROMPTS, subset, max_new_tokens=NEW, batch_size=4, progress=False)
        fast = fast_patched_generate(m1, scales, PROMPTS, subset, max_new_tokens=NEW, batch_size=4, progress=False)
        assert ids(two) == ids(fast), name
        changed += sum(a != b for a, b in zip(ids(two), ids(greedy[0])))
    assert changed > 0  # patching a subset does change M1's answers


def test_shared_m2_prefill_gives_the_same_tokens_for_every_arm_that_reuses_it(m1, m2, scales):
    shared = SharedM2Prefill()
    for name, subset in SUBSETS.items():  # the first arm fills the store, the others reuse it
        two = patched_generate(m1, m2, PROMPTS, subset, max_new_tokens=NEW, batch_size=4, progress=False)
        fast = fast_patched_generate(m1, scales, PROMPTS, subset, max_new_tokens=NEW, batch_size=4,
                                     shared_prefill=shared, progress=False)
        assert ids(fast) == ids(two), name
    assert len(shared) == 2 and shared.nbytes > 0  # two batches of at most 4 prompts, stored once
    # a store past its byte budget keeps nothing and still patches correctly
    empty = SharedM2Prefill(max_bytes=0)
    out = fast_patched_generate(m1, scales, PROMPTS, SUBSETS["half"], max_new_tokens=NEW, batch_size=4,
                                shared_prefill=empty, progress=False)
    assert len(empty) == 0
    assert ids(out) == ids(patched_generate(m1, m2, PROMPTS, SUBSETS["half"], max_new_tokens=NEW, batch_size=4, progress=False))


def test_shared_m2_prefill_refuses_other_scales(m1, scales):
    shared = SharedM2Prefill()
    fast_patched_generate(m1, scales, PROMPTS[:2], SUBSETS["half"], max_new_tokens=2, shared_prefill=shared, progress=False)
    other = {layer: v * 2 for layer, v in scales.items()}
    with pytest.raises(ValueError, match="other \\(IA\\)\\^3 scales"):
        fast_patched_generate(m1, other, PROMPTS[:2], SUBSETS["half"], max_new_tokens=2, shared_prefill=shared, progress=False)


def test_patching_a_subset_is_neither_m1_nor_m2(m1, m2, greedy):
    out = patched_generate(m1, m2, PROMPTS, SUBSETS["across-layers"], max_new_tokens=NEW, batch_size=4, progress=False)
    assert ids(out) != ids(greedy[0]) and ids(out) != ids(greedy[1])


def test_fast_path_patches_a_layer_that_has_no_scale_of_its_own(m1):
    # M2 scales layer 0 only; layer 1's activations still differ, through layer 0
    scale0 = 1 + 0.5 * torch.randn(D_MLP, generator=torch.Generator().manual_seed(5))
    hf2 = tiny_model("llama")
    with torch.no_grad():
        hf2.model.layers[0].mlp.up_proj.weight.mul_(scale0[:, None])
    m2_layer0 = to_bridge(hf2, tiny_tokenizer())
    layer1 = [(1, i) for i in range(0, D_MLP, 2)]
    two = patched_generate(m1, m2_layer0, PROMPTS, layer1, max_new_tokens=NEW, progress=False)
    fast = fast_patched_generate(m1, {0: scale0}, PROMPTS, layer1, max_new_tokens=NEW, progress=False)
    assert ids(two) == ids(fast)
    assert ids(fast) != ids(greedy_generate(m1, PROMPTS, max_new_tokens=NEW, progress=False))


def test_m1_and_m2_may_be_the_same_bridge(m1, greedy):
    # capture and replace hooks then sit on the same hook points: patching M1 with itself is M1
    out = patched_generate(m1, m1, PROMPTS, SUBSETS["half"], max_new_tokens=NEW, progress=False)
    assert ids(out) == ids(greedy[0])


@pytest.mark.parametrize("fast", [False, True])
def test_batched_equals_one_by_one_with_left_padding(m1, m2, scales, fast):
    subset = SUBSETS["half"]

    def run(prompts, batch_size):
        if fast:
            return fast_patched_generate(m1, scales, prompts, subset, max_new_tokens=NEW, batch_size=batch_size, progress=False)
        return patched_generate(m1, m2, prompts, subset, max_new_tokens=NEW, batch_size=batch_size, progress=False)

    batched = run(PROMPTS, 6)  # one batch: the shorter prompts are left-padded by up to 8 tokens
    singles = [run([p], 1)[0] for p in PROMPTS]
    assert ids(batched) == ids(singles)
    assert [g.prompt_ids for g in batched] == PROMPTS  # the caller's order


def test_sampling_is_seeded_per_prompt(m1, m2, scales, greedy):
    kw = dict(max_new_tokens=NEW, do_sample=True, temperature=1.0, progress=False)
    subset = SUBSETS["across-layers"]
    a = patched_generate(m1, m2, PROMPTS, subset, seed=7, batch_size=4, **kw)
    b = patched_generate(m1, m2, PROMPTS, subset, seed=7, batch_size=4, **kw)
    c = patched_generate(m1, m2, PROMPTS, subset, seed=8, batch_size=4, **kw)
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    assert ids(a) != ids(greedy[0])
    # results do not depend on batch composition, and both paths draw the same numbers
    assert ids(fast_patched_generate(m1, scales, PROMPTS, subset, seed=7, batch_size=1, **kw)) == ids(a)
    # k = 0: both paths sample plain M1 identically
    k0_two = patched_generate(m1, m2, PROMPTS, [], seed=7, batch_size=3, **kw)
    k0_fast = fast_patched_generate(m1, scales, PROMPTS, [], seed=7, batch_size=5, **kw)
    assert ids(k0_two) == ids(k0_fast)
    # a prompt's random stream is keyed by its index: reordering the list keeps each prompt's draws
    # only if the index moves with it, so prompt 0 alone equals prompt 0 in the full list
    assert patched_generate(m1, m2, PROMPTS[:1], [], seed=7, **kw)[0].completion_ids == k0_two[0].completion_ids


def test_each_prompt_index_has_its_own_random_stream(m1, m2):
    kw = dict(max_new_tokens=NEW, do_sample=True, seed=3, progress=False)
    same = patched_generate(m1, m2, [PROMPTS[2]] * 3, SUBSETS["half"], **kw)
    assert len({tuple(g.completion_ids) for g in same}) == 3


def test_position_ids_count_real_tokens_under_left_padding(m1, m2):
    seen = []
    handle = m1.original_model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["position_ids"].tolist()), with_kwargs=True)
    try:
        patched_generate(m1, m2, [[1, 40, 41, 42], [1, 50]], SUBSETS["half"], max_new_tokens=3, progress=False)
    finally:
        handle.remove()
    # shortest prompt first (batches are sorted by length)
    assert seen == [[[0, 0, 0, 1], [0, 1, 2, 3]], [[2], [4]], [[3], [5]]]


def test_top_p_sampling_runs_and_is_reproducible(m1, m2):
    kw = dict(max_new_tokens=NEW, do_sample=True, temperature=0.8, top_p=0.5, seed=1, progress=False)
    a = patched_generate(m1, m2, PROMPTS, SUBSETS["half"], **kw)
    assert ids(a) == ids(patched_generate(m1, m2, PROMPTS, SUBSETS["half"], batch_size=2, **kw))
    assert all(len(g.completion_ids) > 0 for g in a)


@pytest.fixture()
def early_eos_models(adapter):
    """Fresh models whose EOS set also holds a byte the models do emit, so some rows stop early."""
    m1 = load_model("tiny-random-llama", device="cpu")
    m2 = load_model("tiny-random-llama", adapter=adapter, device="cpu")
    plain = greedy_generate(m1, PROMPTS, max_new_tokens=NEW, progress=False)
    # the 4th token of prompt 0's answer: it ends that answer early but not every answer at once
    eos = plain[0].completion_ids[3]
    for m in (m1, m2):
        m.original_model.generation_config.eos_token_id = [2, eos]
    return m1, m2, eos


def test_per_row_eos_matches_greedy_generate_and_one_by_one(early_eos_models, adapter):
    m1, m2, eos = early_eos_models
    reference = greedy_generate(m1, PROMPTS, max_new_tokens=NEW, batch_size=6, progress=False)
    stopped = [g.stopped for g in reference]
    assert any(stopped) and not all(stopped)  # some rows end early, the others keep going
    out = patched_generate(m1, m2, PROMPTS, [], max_new_tokens=NEW, batch_size=6, progress=False)
    assert ids(out) == ids(reference)
    assert [g.stopped for g in out] == stopped
    for g in out:
        assert (g.completion_ids[-1] == eos) == g.stopped and eos not in g.completion_ids[:-1]
    # patched, with rows finishing at different steps (finished rows leave the batch)
    subset = SUBSETS["across-layers"]
    batched = patched_generate(m1, m2, PROMPTS, subset, max_new_tokens=NEW, batch_size=6, progress=False)
    singles = [patched_generate(m1, m2, [p], subset, max_new_tokens=NEW, progress=False)[0] for p in PROMPTS]
    assert ids(batched) == ids(singles)
    fast = fast_patched_generate(m1, ia3_neuron_scales(adapter, N_LAYERS, D_MLP), PROMPTS, subset, max_new_tokens=NEW,
                                 batch_size=6, progress=False)
    assert ids(fast) == ids(batched)


def test_stop_strings_end_a_row_and_cut_the_text(m1, m2):
    full = patched_generate(m1, m2, PROMPTS, SUBSETS["half"], max_new_tokens=NEW, progress=False)
    # a printable two-character piece from the middle of one answer
    row, stop = next(
        (r, g.text[i : i + 2]) for r, g in enumerate(full) for i in range(2, len(g.text) - 3)
        if g.text[i : i + 2].isascii() and g.text[i : i + 2].isprintable() and len(g.completion_ids) == len(g.text)
    )
    out = patched_generate(m1, m2, PROMPTS, SUBSETS["half"], max_new_tokens=NEW, stop_strings=[stop], progress=False)
    for g, ref in zip(out, full):
        if stop in ref.text:
            assert g.stopped and g.text == ref.text[: ref.text.index(stop)]
            assert ref.completion_ids[: len(g.completion_ids)] == g.completion_ids
            # the last kept token completed the stop string
            assert stop in m1.tokenizer.decode(g.completion_ids) and stop not in m1.tokenizer.decode(g.completion_ids[:-1])
        else:
            assert g.completion_ids == ref.completion_ids and g.text == ref.text
    assert out[row].text != full[row].text


@pytest.mark.parametrize("fast", [False, True])
def test_stop_when_ends_rows_early_on_a_prefix_of_the_full_answer(m1, m2, scales, fast):
    def run(**kw):
        if fast:
            return fast_patched_generate(m1, scales, PROMPTS, SUBSETS["half"], max_new_tokens=NEW, progress=False, **kw)
        return patched_generate(m1, m2, PROMPTS, SUBSETS["half"], max_new_tokens=NEW, progress=False, **kw)

    full = run()
    # a verdict that cannot change once true (like a refusal phrase in the opening): a character seen
    # in the middle of some answer has appeared
    mark = next(g.text[i] for g in full for i in range(2, len(g.text) - 2) if len(g.completion_ids) == len(g.text))
    verdict = lambda text: mark in text  # noqa: E731
    early = run(stop_when=verdict)
    assert any(len(e.completion_ids) < len(f.completion_ids) for e, f in zip(early, full))  # some rows did stop early
    for e, f in zip(early, full):
        assert f.completion_ids[: len(e.completion_ids)] == e.completion_ids  # the same tokens, up to the stop
        assert verdict(e.text) == verdict(f.text)
    with pytest.raises(ValueError, match="stop_when must be a function"):
        run(stop_when="e")


def test_ablation_equals_a_hooked_greedy_generation(m2):
    idx = [3, 17, 40]
    neurons = [(0, i) for i in idx] + [(1, 5)]

    def hooked(value):
        def fn(act, hook):
            layer = int(hook.name.split(".")[1])
            cols = idx if layer == 0 else [5]
            act[..., cols] = value
            return act
        return [("blocks.0.mlp.hook_post", fn), ("blocks.1.mlp.hook_post", fn)]

    with m2.hooks(fwd_hooks=hooked(0.0)):
        zeroed = greedy_generate(m2, PROMPTS, max_new_tokens=NEW, progress=False)
    with m2.hooks(fwd_hooks=hooked(0.25)):
        meaned = greedy_generate(m2, PROMPTS, max_new_tokens=NEW, progress=False)
    assert ids(zeroed) != ids(greedy_generate(m2, PROMPTS, max_new_tokens=NEW, progress=False))
    assert ids(ablated_generate(m2, PROMPTS, neurons, mode="zero", max_new_tokens=NEW, progress=False)) == ids(zeroed)
    means = {0: torch.full((D_MLP,), 0.25), 1: torch.full((D_MLP,), 0.25)}
    assert ids(ablated_generate(m2, PROMPTS, neurons, mode="mean", means=means, max_new_tokens=NEW, progress=False)) == ids(meaned)
    matrix = torch.full((N_LAYERS, D_MLP), 0.25)  # e.g. RunningMoments.mean
    assert ids(ablated_generate(m2, PROMPTS, neurons, mode="mean", means=matrix, max_new_tokens=NEW, progress=False)) == ids(meaned)
    aligned = np.full(len(neurons), 0.25)
    assert ids(ablated_generate(m2, PROMPTS, neurons, mode="mean", means=aligned, max_new_tokens=NEW, progress=False)) == ids(meaned)
    with pytest.raises(ValueError, match="mode='mean' needs `means`"):
        ablated_generate(m2, PROMPTS, neurons, mode="mean", max_new_tokens=NEW)
    with pytest.raises(ValueError, match="2 values but there are 4 neurons"):
        ablated_generate(m2, PROMPTS, neurons, mode="mean", means=[0.0, 1.0], max_new_tokens=NEW)


def test_bad_neurons_and_options_get_clear_errors(m1, m2):
    with pytest.raises(ValueError, match=r"neuron \(layer 2, index 0\) is out of range: the model has 2 layers x 64 neurons"):
        patched_generate(m1, m2, PROMPTS, [(0, 1), (2, 0)], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"neuron \(layer 1, index 64\) is out of range"):
        patched_generate(m1, m2, PROMPTS, np.array([[1, 64]]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"neuron \(layer -1, index 3\)"):
        as_neuron_list(torch.tensor([[-1, 3]]), N_LAYERS, D_MLP)
    with pytest.raises(ValueError, match=r"shape \(k, 2\)"):
        as_neuron_list([(0, 1, 2)], N_LAYERS, D_MLP)
    with pytest.raises(ValueError, match="empty"):
        patched_generate(m1, m2, [], [], max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature"):
        patched_generate(m1, m2, PROMPTS, [], max_new_tokens=2, do_sample=True, temperature=0)
    narrow = to_bridge(tiny_model("llama", d_mlp=48), tiny_tokenizer())
    with pytest.raises(ValueError, match="different shapes"):
        patched_generate(m1, narrow, PROMPTS, [], max_new_tokens=2)
    assert as_neuron_list([(1, 2), (1, 2), (0, 0)], N_LAYERS, D_MLP) == [(1, 2), (0, 0)]


def test_ia3_neuron_scales_reads_down_proj_vectors_and_refuses_the_rest(adapter, tmp_path):
    from safety_neurons.lm.models import read_ia3_adapter

    scales = ia3_neuron_scales(adapter, N_LAYERS, D_MLP)
    _, state = read_ia3_adapter(adapter)
    assert sorted(scales) == [0, 1]
    key = next(k for k in state if "layers.1.mlp.down_proj" in k)
    torch.testing.assert_close(scales[1], state[key].float().flatten())
    make_ia3_adapter(tiny_model("llama"), tmp_path, targets=("gate_proj", "up_proj", "down_proj"))
    with pytest.raises(ModelLoadError, match="fast path needs MLP-neuron-only.*patched_generate"):
        ia3_neuron_scales(tmp_path, N_LAYERS, D_MLP)
    with pytest.raises(ModelLoadError, match="64 entries but the model has 48"):
        ia3_neuron_scales(adapter, N_LAYERS, 48)


def test_auto_batches_count_a_patched_prompt_as_two_rows(m1, m2, scales, greedy, monkeypatch):
    """batch_size="auto" sizes each generator for the longest prompt plus its answer, two rows per prompt
    where M1's and M2's rows run together (both patched paths), one where only M1 or M2 runs (k = 0,
    ablation); the answers are those of the batch it returns."""
    import safety_neurons.method.patching as patching

    calls = []

    def recording(batch_size, model, lengths, **kw):
        calls.append((batch_size, max(lengths), kw))
        return 3

    monkeypatch.setattr(patching, "fitted_rows", recording)
    half = SUBSETS["half"]
    fast = fast_patched_generate(m1, scales, PROMPTS, half, max_new_tokens=NEW, batch_size="auto", progress=False)
    two = patched_generate(m1, m2, PROMPTS, half, max_new_tokens=NEW, batch_size="auto", progress=False)
    k0 = fast_patched_generate(m1, scales, PROMPTS, [], max_new_tokens=NEW, batch_size="auto", progress=False)
    ablated_generate(m2, PROMPTS, half, max_new_tokens=NEW, batch_size="auto", progress=False)
    longest = max(map(len, PROMPTS))
    assert calls == [("auto", longest, {"extra_tokens": NEW, "rows_per_prompt": r, "generation": True}) for r in (2, 2, 1, 1)]
    assert ids(fast) == ids(two)
    assert ids(fast) == ids(fast_patched_generate(m1, scales, PROMPTS, half, max_new_tokens=NEW, batch_size=3, progress=False))
    assert ids(k0) == ids(greedy[0])
