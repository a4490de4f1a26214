"""Continuous safety measures on tiny fp32 models (M1 = tiny Llama, M2 = + random (IA)^3 on down_proj):
no neurons is M1, all neurons is M2, values equal hand-hooked unpadded forwards, batching changes nothing."""
import numpy as np
import pytest
import torch

from safety_neurons.judges.refusal import refusal_logodds_from_logits, refusal_start_token_ids
from safety_neurons.lm.generation import Generation, greedy_generate
from safety_neurons.lm.sharding import forward_batches
from safety_neurons.method.measures import (
    gap_closed,
    measure_effect,
    patched_answer_loglik,
    patched_answer_margin,
    patched_forward,
    patched_logodds_and_loglik,
    patched_refusal_logodds,
    sampled_refusal,
)

N_LAYERS, D_MLP = 2, 64
ALL = [(layer, i) for layer in range(N_LAYERS) for i in range(D_MLP)]
PROMPTS = [
    [1, 40, 41, 42, 43, 44, 45, 46, 47, 48],
    [1, 50, 51],
    [1, 60, 61, 62, 63, 64],
    [1, 70],
    [5, 6, 7, 8, 9, 10, 11],
]
SUBSET = [(0, 3), (0, 17), (0, 40), (1, 5), (1, 33), (1, 60)]
NEW = 6

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def answers(m1, m2):
    """(M1's, M2's) greedy answers as token ids, cut to prefixes of different lengths (the tiny models
    never emit EOS within NEW tokens): every row of a batch then scores a different number of positions."""
    a1 = [g.completion_ids for g in greedy_generate(m1, PROMPTS, max_new_tokens=NEW, progress=False)]
    a2 = [g.completion_ids for g in greedy_generate(m2, PROMPTS, max_new_tokens=NEW, progress=False)]
    a1 = [a[:k] for a, k in zip(a1, [2, 6, 4, 5, 1])]
    a2 = [a[:k] for a, k in zip(a2, [6, 3, 5, 1, 4])]
    assert all(x != y for x, y in zip(a1, a2))
    return a1, a2


def plain_logits(bridge, seq, neurons=(), source=None) -> torch.Tensor:
    """[len, vocab] logits of one unpadded sequence; with `neurons`, `source`'s hook_post values of them
    replace the bridge's own at every position (a hooked forward built by hand)."""
    hooks = []
    if neurons:
        names = [f"blocks.{layer}.mlp.hook_post" for layer in range(N_LAYERS)]
        with torch.no_grad():
            _, cache = source.run_with_cache(torch.tensor([seq]), names_filter=names)
        for layer in range(N_LAYERS):
            idx = [i for l, i in neurons if l == layer]
            if idx:
                def fn(act, hook, layer=layer, idx=idx):
                    act[..., idx] = cache[f"blocks.{layer}.mlp.hook_post"][..., idx]
                    return act
                hooks.append((f"blocks.{layer}.mlp.hook_post", fn))
    with torch.no_grad(), bridge.hooks(fwd_hooks=hooks):
        return bridge.original_model(input_ids=torch.tensor([seq])).logits[0].float()


def brute_loglik(bridge, prompt, answer, neurons=(), source=None) -> float:
    logp = torch.log_softmax(plain_logits(bridge, prompt + answer, neurons, source), dim=-1)
    p = len(prompt)
    return float(torch.stack([logp[p - 1 + j, t] for j, t in enumerate(answer)]).double().mean())


def brute_logodds(bridge, prompt, neurons=(), source=None) -> float:
    ids = torch.tensor(refusal_start_token_ids(bridge.tokenizer))
    return float(refusal_logodds_from_logits(plain_logits(bridge, prompt, neurons, source)[-1:], ids)[0])


# ---------------------------------------------------------------- the ends: M1 and M2


def test_no_neurons_is_m1_and_all_neurons_is_m2(m1, m2, answers):
    _, a2 = answers
    for neurons, model in (([], m1), (ALL, m2)):
        lo = patched_refusal_logodds(m1, m2, PROMPTS, neurons, batch_size=3)
        ll = patched_answer_loglik(m1, m2, PROMPTS, a2, neurons, batch_size=3)
        np.testing.assert_allclose(lo, [brute_logodds(model, p) for p in PROMPTS], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ll, [brute_loglik(model, p, a) for p, a in zip(PROMPTS, a2)], rtol=1e-4, atol=1e-4)
    # the ends really differ, so C is defined
    assert not np.allclose(patched_answer_loglik(m1, m2, PROMPTS, a2, []), patched_answer_loglik(m1, m2, PROMPTS, a2, ALL))


def test_patched_forward_with_all_neurons_gives_m2s_logits_at_every_position(m1, m2, answers):
    seqs = [p + a for p, a in zip(PROMPTS, answers[1])]
    out = patched_forward(m1, m2, seqs, ALL, batch_size=5)
    for seq, logits in zip(seqs, out):
        assert logits.shape == (len(seq), 259)
        torch.testing.assert_close(logits, plain_logits(m2, seq), rtol=1e-4, atol=1e-4)
    # keep: only the last positions, one count per sequence
    last = patched_forward(m1, m2, seqs, [], keep=[1, 2, 3, 1, 2], batch_size=5)
    for seq, k, logits in zip(seqs, [1, 2, 3, 1, 2], last):
        torch.testing.assert_close(logits[-k:], plain_logits(m1, seq)[-k:], rtol=1e-4, atol=1e-4)


def test_gap_closed_is_0_at_m1_and_1_at_m2_by_construction(m1, m2, answers):
    a1, a2 = answers
    measures = {
        "logodds": lambda n: patched_refusal_logodds(m1, m2, PROMPTS, n),
        "likelihood": lambda n: patched_answer_loglik(m1, m2, PROMPTS, a2, n),
        "margin": lambda n: patched_answer_margin(m1, m2, PROMPTS, a2, a1, n),
    }
    for name, measure in measures.items():
        s1, s2 = measure([]), measure(ALL)
        assert gap_closed(s1, s1, s2) == 0.0, name
        assert gap_closed(s2, s1, s2) == pytest.approx(1.0), name
        assert gap_closed(measure(ALL[::-1]), s1, s2) == pytest.approx(1.0, abs=1e-5), name


# ---------------------------------------------------------------- exact values and batching


def test_answer_loglik_equals_a_hand_hooked_m1(m1, m2, answers):
    a1, a2 = answers
    got = patched_answer_loglik(m1, m2, PROMPTS, a2, SUBSET, batch_size=5)
    expected = [brute_loglik(m1, p, a, SUBSET, m2) for p, a in zip(PROMPTS, a2)]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the plain M1 log-probs summed over the answer positions, without any of the module's code
    total = patched_answer_loglik(m1, m2, PROMPTS, a1, [], reduction="sum")
    for p, a, value in zip(PROMPTS, a1, total):
        logits = m1.original_model(input_ids=torch.tensor([p + a])).logits[0].detach()
        logp = torch.log_softmax(logits, -1)
        assert value == pytest.approx(sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(a)), abs=1e-4)
    margin = patched_answer_margin(m1, m2, PROMPTS, a2, a1, SUBSET)
    np.testing.assert_allclose(margin, got - patched_answer_loglik(m1, m2, PROMPTS, a1, SUBSET), rtol=1e-6, atol=1e-6)


def test_refusal_logodds_equals_a_hand_hooked_m1(m1, m2):
    got = patched_refusal_logodds(m1, m2, PROMPTS, SUBSET, batch_size=5)
    np.testing.assert_allclose(got, [brute_logodds(m1, p, SUBSET, m2) for p in PROMPTS], rtol=1e-4, atol=1e-4)
    assert got.shape == (len(PROMPTS),) and got.dtype == np.float64


def test_batching_does_not_change_results(m1, m2, answers):
    a2 = answers[1]
    # batch 1 pads nothing; batch 3 pads a little (rows are capped by padded tokens); batch 32 puts every
    # prompt (2 to 10 tokens) and every prompt + answer (3 to 16 tokens) in one left-padded batch
    assert forward_batches([len(p) for p in PROMPTS], 32) == [[3, 1, 2, 4, 0]]
    assert len(forward_batches([len(p) + len(a) for p, a in zip(PROMPTS, a2)], 32)) == 1
    for fn in (lambda b: patched_refusal_logodds(m1, m2, PROMPTS, SUBSET, batch_size=b),
               lambda b: patched_answer_loglik(m1, m2, PROMPTS, a2, SUBSET, batch_size=b)):
        one = fn(1)
        np.testing.assert_allclose(fn(3), one, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(fn(32), one, rtol=1e-5, atol=1e-5)


def test_a_random_subset_lies_strictly_between(m1, m2, answers):
    a2 = answers[1]
    rng = np.random.default_rng(0)
    half = [ALL[i] for i in sorted(rng.choice(len(ALL), size=len(ALL) // 2, replace=False))]
    s1 = patched_answer_loglik(m1, m2, PROMPTS, a2, [])
    s2 = patched_answer_loglik(m1, m2, PROMPTS, a2, ALL)
    c = gap_closed(patched_answer_loglik(m1, m2, PROMPTS, a2, half), s1, s2)
    assert 0.05 < c < 0.95


def test_m1_and_m2_may_be_the_same_bridge(m1, answers):
    a2 = answers[1]
    np.testing.assert_allclose(patched_answer_loglik(m1, m1, PROMPTS, a2, SUBSET),
                               patched_answer_loglik(m1, m1, PROMPTS, a2, []), rtol=1e-6, atol=1e-6)


def test_one_pass_gives_both_measures_as_the_separate_passes_do(m1, m2, answers):
    a2 = list(answers[1])
    a2[3] = []  # an empty answer: its log-odds still, a NaN likelihood
    for neurons in ([], SUBSET, ALL):
        logodds, loglik = patched_logodds_and_loglik(m1, m2, PROMPTS, a2, neurons, batch_size=2)
        np.testing.assert_allclose(logodds, patched_refusal_logodds(m1, m2, PROMPTS, neurons), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(loglik, patched_answer_loglik(m1, m2, PROMPTS, a2, neurons), rtol=1e-5, atol=1e-5)
        assert np.isnan(loglik[3]) and np.isfinite(logodds).all()
    assert logodds[0] == pytest.approx(brute_logodds(m1, PROMPTS[0], ALL, m2), abs=1e-4)


# ---------------------------------------------------------------- empty answers and bad inputs


def test_an_empty_answer_scores_nan_and_its_prompt_is_left_out(m1, m2, answers):
    a2 = list(answers[1])
    a2[2] = []
    values = patched_answer_loglik(m1, m2, PROMPTS, a2, SUBSET)
    assert np.isnan(values[2]) and np.isfinite(np.delete(values, 2)).all()
    s1, s2 = patched_answer_loglik(m1, m2, PROMPTS, a2, []), patched_answer_loglik(m1, m2, PROMPTS, a2, ALL)
    keep = [0, 1, 3, 4]
    assert gap_closed(values, s1, s2) == pytest.approx(gap_closed(values[keep], s1[keep], s2[keep]))
    effect = measure_effect(values, s1, s2, n_boot=200)
    assert effect["n_prompts"] == 4 and effect["n_dropped"] == 1
    assert np.isnan(patched_answer_loglik(m1, m2, PROMPTS[:1], [[]], SUBSET)).all()


def test_bad_inputs_are_refused(m1, m2):
    with pytest.raises(ValueError, match="one answer per prompt"):
        patched_answer_loglik(m1, m2, PROMPTS, [[5]], [])
    with pytest.raises(ValueError, match="keep asks for its last 4"):
        patched_forward(m1, m2, [[1, 2, 3]], [], keep=4)
    with pytest.raises(ValueError, match="out of range"):
        patched_refusal_logodds(m1, m2, PROMPTS, [(2, 0)])
    with pytest.raises(ValueError, match="empty"):
        patched_refusal_logodds(m1, m2, [], [])
    with pytest.raises(ValueError, match="unknown reduction"):
        patched_answer_loglik(m1, m2, PROMPTS, PROMPTS, [], reduction="max")


# ---------------------------------------------------------------- statistics and sampled refusal


def test_measure_effect_reports_c_its_interval_and_the_test_against_random():
    rng = np.random.default_rng(0)
    s1 = rng.normal(0, 1, 40)
    s2 = s1 + 2 + rng.normal(0, 0.1, 40)
    top = s1 + 1.5 + rng.normal(0, 0.1, 40)  # closes about 75% of the gap
    random = [s1 + 0.2 + rng.normal(0, 0.1, 40) for _ in range(3)]
    effect = measure_effect(top, s1, s2, random, n_boot=500)
    assert effect["lo"] < effect["C"] < effect["hi"] and 0.65 < effect["C"] < 0.85
    assert 0 < effect["random"]["C"] < 0.2
    assert effect["pvalue"] < 0.01
    assert effect["n_prompts"] == 40 and effect["n_dropped"] == 0
    assert "random" not in measure_effect(top, s1, s2, n_boot=100)
    with pytest.raises(ValueError, match="one value per prompt"):
        measure_effect(top[:5], s1, s2)
    with pytest.raises(ValueError, match="undefined"):
        gap_closed(top, s1, s1)


def test_sampled_refusal_is_the_share_of_refusing_samples():
    calls = []

    def generate(prompt_ids, seed):
        calls.append(seed)
        # prompt i refuses under seeds below i: shares 0, 1/3, 2/3, 1
        return [Generation(p, [], "I'm sorry, I can't help." if seed < i else "Sure! Step one:", True)
                for i, p in enumerate(prompt_ids)]

    shares = sampled_refusal(generate, [[1], [2], [3], [4]], seeds=[0, 1, 2])
    np.testing.assert_allclose(shares, [0, 1 / 3, 2 / 3, 1])
    assert calls == [0, 1, 2]
    assert sampled_refusal(lambda ids, s: ["I cannot do that"] * len(ids), [[1], [2]], [7]).tolist() == [1.0, 1.0]
    with pytest.raises(RuntimeError, match="1 answers for 2 prompts"):
        sampled_refusal(lambda ids, s: ["x"], [[1], [2]], [0])
    with pytest.raises(ValueError, match="no seeds"):
        sampled_refusal(generate, [[1]], [])


def test_sampled_refusal_with_the_patched_generator_is_reproducible(m1, m2):
    from safety_neurons.method.patching import patched_generate

    def generate(ids, seed):
        return patched_generate(m1, m2, ids, SUBSET, max_new_tokens=4, do_sample=True, seed=seed, progress=False)

    a = sampled_refusal(generate, PROMPTS, seeds=[0, 1])
    assert a.shape == (len(PROMPTS),) and ((a >= 0) & (a <= 1)).all()
    np.testing.assert_array_equal(a, sampled_refusal(generate, PROMPTS, seeds=[0, 1]))
