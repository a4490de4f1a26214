import pytest

from safety_neurons.lm.generation import answer_prompts, checked_prompt_ids, eos_token_ids, greedy_generate, left_pad, truncate_at_eos
from safety_neurons.lm.models import to_bridge
from safety_neurons.lm.tiny import tiny_model, tiny_tokenizer


def test_left_pad_puts_padding_on_the_left_and_masks_it():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="no tokens"):
        left_pad([[1], []], pad_id=0)


def test_truncate_at_eos_keeps_the_eos_and_reports_it():
    assert truncate_at_eos([4, 5, 2, 0, 0], [2]) == ([4, 5, 2], True)
    assert truncate_at_eos([4, 5, 6], [2]) == ([4, 5, 6], False)


def test_eos_ids_merge_tokenizer_and_generation_config():
    model = tiny_model("llama")
    model.generation_config.eos_token_id = [2, 7]
    assert eos_token_ids(model, tiny_tokenizer()) == [2, 7]


def test_generation_keeps_the_callers_order_and_stops_at_max_new_tokens():
    bridge = to_bridge(tiny_model("llama"), tiny_tokenizer())
    prompts = ["a much longer prompt than the others", "hi", "medium prompt"]
    gens = answer_prompts(bridge, prompts, max_new_tokens=5, batch_size=2, progress=False)
    singles = [answer_prompts(bridge, [p], max_new_tokens=5, progress=False)[0] for p in prompts]
    assert [g.completion_ids for g in gens] == [s.completion_ids for s in singles]
    assert all(len(g.completion_ids) <= 5 for g in gens)
    assert all(g.stopped == (g.completion_ids[-1] == 2) for g in gens)


def test_empty_prompt_list_is_an_error():
    bridge = to_bridge(tiny_model("llama"), tiny_tokenizer())
    with pytest.raises(ValueError, match="empty"):
        greedy_generate(bridge, [], max_new_tokens=3)


def test_stop_when_cuts_each_row_at_the_first_token_that_makes_it_true():
    bridge = to_bridge(tiny_model("llama"), tiny_tokenizer())
    prompts = ["a much longer prompt than the others", "hi", "medium prompt", "x"]
    full = answer_prompts(bridge, prompts, max_new_tokens=8, batch_size=4, progress=False)
    ids = [g.prompt_ids for g in full]
    tok = bridge.tokenizer

    def stop(text: str) -> bool:
        return len(text) >= 3

    cut = greedy_generate(bridge, ids, max_new_tokens=8, batch_size=4, progress=False, stop_when=stop)
    for f, c in zip(full, cut):
        # the shortest prefix of the full answer (before any EOS) whose text satisfies stop_when, else the full answer
        n = next((n for n in range(1, len(f.completion_ids) + 1)
                  if f.completion_ids[n - 1] != 2 and stop(tok.decode(f.completion_ids[:n], skip_special_tokens=True))), None)
        assert c.completion_ids == (f.completion_ids if n is None else f.completion_ids[:n])
        assert c.stopped == (f.stopped or n is not None)
    assert any(len(c.completion_ids) < len(f.completion_ids) for f, c in zip(full, cut))


def test_checked_prompt_ids_names_what_is_empty():
    assert checked_prompt_ids([(1, 2), [3]]) == [[1, 2], [3]]
    with pytest.raises(ValueError, match="no source prompts: the prompt set is empty"):
        checked_prompt_ids([], "source prompts")
    with pytest.raises(ValueError, match="prompt 1 of the prompts has no tokens"):
        checked_prompt_ids([[1], []])
