"""The dense CPU head gives trl's chunked head's numbers and gradients, and patches trl only while asked."""
import pytest
import torch
import trl.trainer.utils as trl_utils
from trl.kernels import ChunkedLogProbFunction

from safety_neurons.lm.tiny import tiny_model
from safety_neurons.method.cpu_logprobs import dense_cpu_logprobs, dense_logprobs

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


@pytest.mark.parametrize("softcap, scale, temperature", [(None, 1.0, 1.0), (5.0, 0.5, 0.7)])
def test_dense_logprobs_equal_trl_chunked_head(softcap, scale, temperature):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=gen, dtype=torch.float64).float().requires_grad_(True)
    weight = torch.randn(300, 16, generator=gen)
    bias = torch.randn(300, generator=gen)
    targets = torch.randint(0, 300, (37,), generator=gen)
    targets[:3] = (hidden.detach() @ weight.T + bias)[:3].argmax(-1)  # some targets are the top-1 token

    ours = dense_logprobs(hidden, weight, bias, targets, temperature, 64, softcap, scale, OUTPUTS)
    hidden_trl = hidden.detach().clone().requires_grad_(True)
    theirs = ChunkedLogProbFunction.apply(hidden_trl, weight, bias, targets, temperature, 64, softcap, scale, OUTPUTS)
    for name, a, b in zip(OUTPUTS, ours, theirs):
        if a.dtype == torch.bool:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)
    assert ours[4][:3].all()

    (ours[0].sum() + 0.3 * ours[1].sum()).backward()
    (theirs[0].sum() + 0.3 * theirs[1].sum()).backward()
    torch.testing.assert_close(hidden.grad, hidden_trl.grad, rtol=1e-4, atol=1e-5)


def test_unrequested_outputs_are_none():
    h, w, t = torch.randn(4, 8), torch.randn(20, 8), torch.tensor([0, 1, 2, 3])
    log_probs, *rest = dense_logprobs(h, w, None, t, 1.0, 64)
    assert log_probs.shape == (4,) and rest == [None, None, None, None]


def test_context_patches_trl_on_cpu_only_and_restores():
    original = trl_utils._ChunkedLogProbFunction, trl_utils._use_triton
    with dense_cpu_logprobs(torch.device("meta")):
        assert (trl_utils._ChunkedLogProbFunction, trl_utils._use_triton) == original
    with dense_cpu_logprobs(torch.device("cpu")):
        assert trl_utils._ChunkedLogProbFunction.apply is dense_logprobs
        assert trl_utils._use_triton(torch.device("cpu"))
    assert (trl_utils._ChunkedLogProbFunction, trl_utils._use_triton) == original


def test_context_restores_trl_after_an_error():
    original = trl_utils._ChunkedLogProbFunction
    with pytest.raises(KeyError), dense_cpu_logprobs(torch.device("cpu")):
        raise KeyError("inside")
    assert trl_utils._ChunkedLogProbFunction is original


def test_fused_forward_of_a_model_matches_with_and_without_the_dense_head():
    """trl's fused forward on a tiny Llama: labelled positions get the same log-probs, the rest 0."""
    model = tiny_model()
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :5] = -100  # a prompt: no label
    labels[1, 9:] = -100  # padding
    plain = model(input_ids=ids, labels=labels, fused_lm_head=True)
    with dense_cpu_logprobs(torch.device("cpu")):
        dense = model(input_ids=ids, labels=labels, fused_lm_head=True)
    mask = plain.label_mask
    assert int(mask.sum()) == 7 + 4  # labels shift by one: positions 5-11 and 5-8 are scored
    torch.testing.assert_close(dense.log_probs, plain.log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense.entropy[mask], plain.entropy[mask], rtol=1e-5, atol=1e-5)
    assert torch.equal(dense.is_top1[mask], plain.is_top1[mask])
    assert (dense.log_probs[~mask] == 0).all()
    torch.testing.assert_close(dense.loss, plain.loss)


def test_missing_trl_internals_are_a_clear_error(monkeypatch):
    monkeypatch.delattr(trl_utils, "_use_triton")
    with pytest.raises(RuntimeError, match="trl==1.16.0"), dense_cpu_logprobs(torch.device("cpu")):
        pass
