import math

import pytest
import torch

from safety_neurons.judges.evaluation import evaluate_refusal, perplexity
from safety_neurons.lm.models import to_bridge
from safety_neurons.lm.tiny import tiny_model, tiny_tokenizer


def test_perplexity_is_exp_of_the_mean_token_nll_whatever_the_batching():
    bridge = to_bridge(tiny_model("llama"), tiny_tokenizer())
    texts = ["a short text", "a somewhat longer text with more tokens in it"]
    nll, n = 0.0, 0
    for t in texts:
        ids = torch.tensor([bridge.tokenizer(t, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            loss = bridge.original_model(input_ids=ids, labels=ids).loss.item()
        nll += loss * (ids.shape[1] - 1)
        n += ids.shape[1] - 1
    expected = math.exp(nll / n)
    assert perplexity(bridge, texts, batch_size=2, progress=False) == pytest.approx(expected, rel=1e-4)
    assert perplexity(bridge, texts, batch_size=1, progress=False) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="no text"):
        perplexity(bridge, [])


def test_evaluate_refusal_pairs_answers_verdicts_and_logodds():
    bridge = to_bridge(tiny_model("llama"), tiny_tokenizer())
    result = evaluate_refusal(bridge, ["one", "two", "three"], template="auto", max_new_tokens=4, batch_size=2, progress=False)
    assert len(result.answers) == len(result.refused) == len(result.logodds) == 3
    assert 0.0 <= result.rate <= 1.0 and math.isfinite(result.mean_logodds)


def test_answer_format_counts_stopped_answers_and_new_template_turns():
    from safety_neurons.judges.evaluation import answer_format
    from safety_neurons.lm.chat import turn_markers
    from safety_neurons.lm.generation import Generation

    tok = tiny_tokenizer()
    markers = turn_markers(tok, "plain")
    answers = [Generation([1], [5, 2], "Sure.", True),
               Generation([1], [5, 6], "Sure. ### Instruction: next", False),
               Generation([1], [5, 6], "and so on", False),
               Generation([1], [2], "", True)]
    assert answer_format(answers, markers) == {"stopped": 0.5, "new_turn": 0.25}
    assert answer_format(answers[:1], markers) == {"stopped": 1.0, "new_turn": 0.0}  # an assistant's answer
    assert turn_markers(tok, "chat") == () and "<|user|>" in turn_markers(tok, "tulu")
    with pytest.raises(ValueError, match="no answers"):
        answer_format([], markers)
