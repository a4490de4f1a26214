"""Preference generators: deterministic per seed, correct by construction, varied refusals."""
import random
import re

import pytest

from safety_neurons.judges.refusal import phrase_verdict
from safety_neurons.data.preferences import (
    extraction_pairs,
    harmless_pairs,
    helpful_pairs,
    make_refusal,
    reasoning_pairs,
)


def test_refusals_vary_and_are_recognised_by_the_judge():
    rng = random.Random(0)
    refusals = [make_refusal(rng) for _ in range(200)]
    assert len(set(refusals)) > 100
    assert len({len(r) for r in refusals}) > 30
    assert all(phrase_verdict(r).refused for r in refusals)


def test_harmless_pairs_prefer_refusal_on_harmful_and_answers_on_benign():
    pairs = harmless_pairs(["h1", "h2"], ["comply1", "comply2"], ["b1"], ["answer1"], seed=0)
    by_prompt = {p.prompt: p for p in pairs}
    assert by_prompt["h1"].rejected == "comply1" and phrase_verdict(by_prompt["h1"].chosen).refused
    assert by_prompt["b1"].chosen == "answer1" and phrase_verdict(by_prompt["b1"].rejected).refused
    assert pairs == harmless_pairs(["h1", "h2"], ["comply1", "comply2"], ["b1"], ["answer1"], seed=0)


def test_harmless_pairs_reject_bad_input():
    with pytest.raises(ValueError, match="no harmful prompts"):
        harmless_pairs([], [], ["b"], ["a"], seed=0)
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        harmless_pairs(["a", "b"], ["x"], [], [], seed=0)


def test_helpful_pairs_reject_terse_or_refusing_answers():
    pairs = helpful_pairs(["q1", "q2", "q3"], ["full answer 1", "full answer 2", "full answer 3"], seed=1)
    assert all(p.chosen.startswith("full answer") for p in pairs)
    assert all(len(p.rejected) < 200 and p.rejected != p.chosen for p in pairs)


def test_reasoning_pairs_are_correct_and_the_rejected_one_is_wrong():
    for pair in reasoning_pairs(50, seed=3):
        nums = [int(x) for x in re.findall(r"\d+", pair.prompt)]
        a, b, c, k = nums
        assert pair.chosen.endswith(f"has {(a + b - c) * k} {pair.prompt.split()[3]}.")
        assert pair.rejected != pair.chosen
        assert f"{(a + b - c) * k}" not in pair.rejected.split("=")[-1]
    assert reasoning_pairs(5, seed=3) == reasoning_pairs(5, seed=3)
    assert reasoning_pairs(5, seed=3) != reasoning_pairs(5, seed=4)


def test_extraction_pairs_choose_a_span_of_the_text():
    for pair in extraction_pairs(50, seed=0):
        text = pair.prompt.split("Text: ", 1)[1]
        assert pair.chosen in text and pair.rejected in text and pair.chosen != pair.rejected


@pytest.mark.parametrize("gen", [reasoning_pairs, extraction_pairs])
def test_generators_need_a_positive_size(gen):
    with pytest.raises(ValueError, match="must be positive"):
        gen(0, seed=0)
