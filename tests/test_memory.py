"""batch_size="auto": the per-row estimate, the rows that fit, the CPU default, the CUDA path (its free
memory faked: no GPU here), the error when CUDA runs out anyway, and the call sites that size batches."""
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, LlamaConfig

from safety_neurons.lm import memory
from safety_neurons.lm.generation import greedy_generate
from safety_neurons.lm.models import to_bridge
from safety_neurons.lm.sharding import forward_batches
from safety_neurons.lm.tiny import tiny_model, tiny_tokenizer

SIZES = dict(n_layers=1, d_model=2, n_heads=1, d_mlp=4, d_vocab=3, d_head=2, n_kv_heads=1)


@pytest.mark.parametrize("good", [1, 32, "auto"])
def test_check_batch_size_accepts_positive_integers_and_auto(good):
    assert memory.check_batch_size(good) == good


@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "big", None])
def test_check_batch_size_names_both_forms(bad):
    with pytest.raises(ValueError, match="positive integer or 'auto'"):
        memory.check_batch_size(bad)


def test_architecture_reads_llama_and_gpt2_configs():
    llama = LlamaConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=96, vocab_size=100)
    assert memory.architecture(llama) == dict(n_layers=3, d_model=64, n_heads=4, d_mlp=96, d_vocab=100, d_head=16, n_kv_heads=2)
    gpt2 = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50)  # n_inner unset: 4 x d_model
    assert memory.architecture(gpt2) == dict(n_layers=2, d_model=32, n_heads=4, d_mlp=128, d_vocab=50, d_head=8, n_kv_heads=4)


def test_architecture_without_a_size_asks_for_an_integer():
    with pytest.raises(ValueError, match="set batch_size to an integer"):
        memory.architecture(SimpleNamespace(hidden_size=8, num_attention_heads=2, intermediate_size=16, vocab_size=10))


def test_row_bytes_counts_cache_captures_logits_activations_and_attention():
    # by hand, one token, bf16: KV 2*1*1*2*2 = 8, MLP capture 1*4*4 = 16, logits 3*3*4 = 36,
    # activations (6*2 + 3*4)*2 = 48, attention scores 2*1*1*1*4 = 8
    assert memory.row_bytes(SIZES, tokens=1, element_bytes=2) == 8 + 16 + 36 + 48 + 8
    # attention grows with the square of the length, the rest linearly
    assert memory.row_bytes(SIZES, 10, 2) == 10 * (8 + 16 + 36 + 48) + 2 * 100 * 4
    # generation computes the last position's logits only
    assert memory.row_bytes(SIZES, 10, 2, generation=True) == 10 * (8 + 16 + 48) + 36 + 2 * 100 * 4


def test_rows_that_fit_uses_a_fraction_of_free_memory_and_the_caps():
    per_row = memory.row_bytes(SIZES, 20, 2)
    free = int(100 * per_row / memory.AUTO_MEMORY_FRACTION) + 1
    assert memory.rows_that_fit(free, SIZES, 20, 2) == 100
    assert memory.rows_that_fit(free, SIZES, 20, 2, rows_per_prompt=2) == 50  # a patched prompt is two rows
    assert memory.rows_that_fit(free, SIZES, 20, 2, n_prompts=7) == 7  # never more than there are
    assert memory.rows_that_fit(free * 100, SIZES, 20, 2, n_prompts=10**6) == memory.AUTO_MAX_ROWS


def test_rows_that_fit_refuses_when_not_one_prompt_fits():
    with pytest.raises(RuntimeError, match="one prompt of 20 tokens needs about .* GiB .* shorten the prompts or answers"):
        memory.rows_that_fit(memory.row_bytes(SIZES, 20, 2), SIZES, 20, 2)


def test_fitted_rows_keeps_an_integer_and_gives_the_cpu_default_for_auto():
    bridge = to_bridge(tiny_model("llama"), tiny_tokenizer())
    assert memory.fitted_rows(5, bridge, [3, 4]) == 5
    assert memory.fitted_rows("auto", bridge, [3, 4]) == memory.CPU_ROWS
    with pytest.raises(ValueError, match="empty"):
        memory.fitted_rows("auto", bridge, [])
    lengths = [5, 300, 40, 41] * 10  # forward batches cap rows and padded tokens at the fitted size
    assert memory.fitted_forward_batches("auto", bridge, lengths) == forward_batches(lengths, memory.CPU_ROWS)
    assert memory.fitted_forward_batches(3, bridge, lengths) == forward_batches(lengths, 3)


class _FakeCudaModel:
    """What fitted_rows reads of a model on a GPU: its first parameter's device and width, its config."""

    def __init__(self, config):
        self.config = config

    def parameters(self):
        yield SimpleNamespace(device=torch.device("cuda:0"), element_size=lambda: 2)


def test_fitted_rows_sizes_auto_from_the_free_memory_cuda_reports(monkeypatch):
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=256)
    sizes = memory.architecture(config)
    per_prompt = memory.row_bytes(sizes, 30 + 10, 2)
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return int(40 * per_prompt / memory.AUTO_MEMORY_FRACTION) + 1, 10**12

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    model = SimpleNamespace(original_model=_FakeCudaModel(config))  # a bridge: its HF model is original_model
    assert memory.fitted_rows("auto", model, [12, 30, 5] * 30, extra_tokens=10) == 40  # sized for the longest
    assert memory.fitted_rows("auto", model, [12, 30, 5] * 30, extra_tokens=10, rows_per_prompt=2) == 20
    assert memory.fitted_rows("auto", model, [12, 30], extra_tokens=10) == 2
    assert asked == [torch.device("cuda:0")] * 3
    assert memory.fitted_rows(8, model, [12, 30]) == 8 and len(asked) == 3  # an integer is not second-guessed


@pytest.mark.parametrize("batch_size,fix", [("auto", "the estimate behind batch_size=.auto. was too optimistic"), (64, "set batch_size below 64")])
def test_explained_oom_names_the_batch_and_the_fix(batch_size, fix):
    with pytest.raises(RuntimeError, match=f"batch of 64 prompts of up to 90 tokens: {fix}") as raised:
        with memory.explained_oom(batch_size, 64, 90):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert isinstance(raised.value.__cause__, torch.cuda.OutOfMemoryError)
    with memory.explained_oom(batch_size, 64, 90):  # anything else passes through untouched
        pass
    with pytest.raises(KeyError):
        with memory.explained_oom(batch_size, 64, 90):
            raise KeyError("x")


def test_generators_size_batches_for_the_prompt_and_the_answer(monkeypatch):
    """greedy_generate asks for the longest prompt plus max_new_tokens, one row per prompt, and cuts its
    batches at the answer; "auto" on the CPU gives the answers an explicit CPU_ROWS gives."""
    import safety_neurons.lm.generation as generation

    calls = []

    def recording(batch_size, model, lengths, **kw):
        calls.append((batch_size, max(lengths), kw))
        return 2

    bridge = to_bridge(tiny_model("llama"), tiny_tokenizer())
    prompts = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14], [15]]
    reference = greedy_generate(bridge, prompts, max_new_tokens=4, batch_size=2, progress=False)
    monkeypatch.setattr(generation, "fitted_rows", recording)
    assert greedy_generate(bridge, prompts, max_new_tokens=4, batch_size="auto", progress=False) == reference
    assert calls == [("auto", 4, {"extra_tokens": 4, "generation": True})]
    monkeypatch.undo()
    auto = greedy_generate(bridge, prompts, max_new_tokens=4, batch_size="auto", progress=False)
    assert auto == greedy_generate(bridge, prompts, max_new_tokens=4, batch_size=memory.CPU_ROWS, progress=False)
