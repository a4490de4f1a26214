"""DPO and SFT with (IA)^3 on tiny models: adapters are complete, resumable, and move the policy."""
import json
from pathlib import Path

import pytest
import torch

from safety_neurons.method.alignment import (
    ADAPTER_DIRNAME,
    TRAIN_LOG,
    TrainSettings,
    adapter_done,
    save_merged_model,
    sft_dataset,
    train_dpo,
    train_sft,
    training_curve,
)
from safety_neurons.data.hub import load_hub_conversations
from safety_neurons.data.preferences import Preference
from safety_neurons.lm.models import load_model
from safety_neurons.lm.tiny import tiny_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "hub"
PAIRS = [Preference(f"request number {i}", "No, I can't.", f"Sure, here is item {i}.", "test") for i in range(8)]
FAST = TrainSettings(learning_rate=5e-2, epochs=2, batch_size=4, save_steps=1)


def completion_logp(bridge, prompt: str, completion: str) -> float:
    from safety_neurons.lm.chat import format_prompt

    tok = bridge.tokenizer
    p = tok(format_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    c = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = bridge.original_model(input_ids=ids).logits.log_softmax(-1)[0, len(p) - 1 : -1]
    return logp.gather(-1, torch.tensor(c)[:, None]).sum().item()


def test_dpo_trains_an_ia3_adapter_on_the_mlp_that_prefers_the_chosen_answers(tmp_path):
    result = train_dpo("tiny-random-llama", PAIRS, tmp_path, settings=FAST, progress=False)
    assert result.adapter_dir == tmp_path / ADAPTER_DIRNAME and adapter_done(tmp_path)
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3" and config["target_modules"] == ["down_proj"]
    assert config["feedforward_modules"] == ["down_proj"]
    assert result.steps == 4 and result.step_seconds > 0
    assert not (tmp_path / "checkpoints").exists()

    m1 = load_model("tiny-random-llama", device="cpu")
    m2 = load_model("tiny-random-llama", adapter=result.adapter_dir, device="cpu")
    def margin(model):
        return sum(completion_logp(model, p.prompt, p.chosen) - completion_logp(model, p.prompt, p.rejected) for p in PAIRS)
    assert margin(m2) > margin(m1) + 1.0

    curve = training_curve(result.log)
    assert list(curve["step"]) == [1, 2, 3, 4]
    assert curve["reward_margin"].iloc[-1] > 0


def test_a_finished_adapter_is_not_retrained(tmp_path, monkeypatch):
    first = train_dpo("tiny-random-llama", PAIRS, tmp_path, settings=FAST, progress=False)
    import safety_neurons.method.alignment as alignment

    monkeypatch.setattr(alignment, "_load_for_training", lambda *a, **k: pytest.fail("retrained a finished adapter"))
    again = train_dpo("tiny-random-llama", PAIRS, tmp_path, settings=FAST, progress=False)
    assert again.steps == first.steps and again.seconds == first.seconds


def test_an_adapter_trained_under_other_settings_or_pairs_is_retrained(tmp_path):
    first = train_dpo("tiny-random-llama", PAIRS, tmp_path, settings=FAST, progress=False)
    other = train_dpo("tiny-random-llama", PAIRS, tmp_path, settings=TrainSettings(**{**FAST.__dict__, "epochs": 1}), progress=False)
    assert (first.steps, other.steps) == (4, 2)
    fewer = train_dpo("tiny-random-llama", PAIRS[:4], tmp_path, settings=FAST, progress=False)
    assert fewer.steps == 2 and json.loads((fewer.adapter_dir / TRAIN_LOG).read_text())["objective_pairs"] == 4


def test_a_run_killed_mid_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from transformers import Trainer

    original = Trainer.training_step
    calls = {"n": 0}

    def dying_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_dpo("tiny-random-llama", PAIRS, tmp_path, settings=FAST, progress=False)
    assert not adapter_done(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]

    monkeypatch.setattr(Trainer, "training_step", original)
    result = train_dpo("tiny-random-llama", PAIRS, tmp_path, settings=FAST, progress=False)
    assert result.resumed and result.steps == 4
    log = json.loads((result.adapter_dir / TRAIN_LOG).read_text())
    assert log["resumed"] is True


RETAIN = [f"The module number {i} provides functions for reading and writing files on disk." for i in range(8)]


def retain_divergence(adapter_dir) -> float:
    """Mean KL(M1 || M2) over the retain texts' tokens."""
    from peft import PeftModel

    from safety_neurons.method.alignment import retain_batches, retain_kl
    from safety_neurons.lm.tiny import tiny_model

    model = PeftModel.from_pretrained(tiny_model("llama"), adapter_dir).eval()
    with torch.no_grad():
        return float(sum(retain_kl(model, b) for b in retain_batches(tiny_tokenizer(), RETAIN, 4, 64)))


def test_the_retain_term_keeps_m2_closer_to_m1_on_general_text(tmp_path):
    strong = TrainSettings(learning_rate=2e-1, epochs=2, batch_size=4, save_steps=100)
    free = train_dpo("tiny-random-llama", PAIRS, tmp_path / "free", settings=strong, progress=False)
    anchored = train_dpo("tiny-random-llama", PAIRS, tmp_path / "anchored", retain_texts=RETAIN, progress=False,
                         settings=TrainSettings(**{**strong.__dict__, "retain_weight": 10.0}))
    assert any("retain_kl" in e for e in anchored.log) and not any("retain_kl" in e for e in free.log)
    assert retain_divergence(anchored.adapter_dir) < 0.5 * retain_divergence(free.adapter_dir)
    with pytest.raises(ValueError, match="retain_weight > 0 needs retain_texts"):
        train_dpo("tiny-random-llama", PAIRS, tmp_path / "x", settings=TrainSettings(retain_weight=1.0))


def test_empty_preference_set_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="preference set is empty"):
        train_dpo("tiny-random-llama", [], tmp_path)


def test_sft_dataset_puts_each_assistant_turn_in_the_completion():
    tok = tiny_tokenizer()
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"}]
    rows = sft_dataset(tok, [conv], "auto").to_list()
    assert [r["completion"] for r in rows] == ["hello<|im_end|>", "fine<|im_end|>"]
    assert rows[1]["prompt"].endswith("<|im_start|>assistant\n") and "hello" in rows[1]["prompt"]
    with pytest.raises(ValueError, match="alternate"):
        sft_dataset(tok, [[{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]], "auto")


def test_sft_on_sharegpt_style_data_then_merge_gives_a_new_m1(tmp_path):
    conversations = load_hub_conversations("sharegpt", path=str(FIXTURES / "ShareGPT_V3_unfiltered_cleaned_split.json"))
    result = train_sft("tiny-random-llama", conversations, tmp_path / "sft", settings=FAST, progress=False)
    assert adapter_done(tmp_path / "sft") and result.steps > 0
    merged = save_merged_model("tiny-random-llama", result.adapter_dir, tmp_path / "m1")
    base = load_model("tiny-random-llama", device="cpu")
    m1 = load_model(str(merged), device="cpu")
    with_adapter = load_model("tiny-random-llama", adapter=result.adapter_dir, device="cpu")
    ids = torch.tensor([[1, 50, 51, 52]])
    torch.testing.assert_close(m1(ids), with_adapter(ids), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(m1(ids), base(ids))
    with pytest.raises(ValueError, match="conversation set is empty"):
        train_sft("tiny-random-llama", [], tmp_path / "none")


def test_a_second_seed_on_the_same_pairs_reuses_the_reference_log_probs(tmp_path, monkeypatch):
    from trl import DPOTrainer

    calls = []
    original = DPOTrainer.compute_ref_log_probs
    monkeypatch.setattr(DPOTrainer, "compute_ref_log_probs", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    shared = tmp_path / "reference"
    for seed in (0, 1):
        settings = TrainSettings(**{**FAST.__dict__, "seed": seed})
        train_dpo("tiny-random-llama", PAIRS, tmp_path / f"seed{seed}", settings=settings, reference_dir=shared, progress=False)
    assert len(calls) == 2  # one pass over 8 pairs in batches of 4, for the first seed only
    alone = train_dpo("tiny-random-llama", PAIRS, tmp_path / "alone", settings=TrainSettings(**{**FAST.__dict__, "seed": 1}),
                      progress=False)
    assert len(calls) == 4
    from safety_neurons.lm.models import read_ia3_adapter

    reused, computed = (read_ia3_adapter(d)[1] for d in (tmp_path / "seed1" / ADAPTER_DIRNAME, alone.adapter_dir))
    assert all(torch.equal(reused[name], computed[name]) for name in computed)  # cached values train the same M2
    train_dpo("tiny-random-llama", PAIRS[:4], tmp_path / "fewer", settings=FAST, reference_dir=shared, progress=False)
    assert len(calls) == 5  # other pairs: their own reference pass
    assert len(list(shared.glob("train-*.json"))) == 2


def test_training_records_the_summed_gradient_and_sgd_steps_follow_it(tmp_path):
    """Plain SGD at a constant rate moves each scale by exactly lr x its summed gradient, so the update
    follows the recorded gradient (Spearman 1); the recorded file maps onto [n_layers, d_mlp]."""
    from safetensors.torch import load_file

    from safety_neurons.lm.models import model_shape
    from safety_neurons.method.alignment import GRADIENT_SUM
    from safety_neurons.method.patching import ia3_neuron_scales
    from safety_neurons.method.update import gradient_sums, ia3_deltas, update_follows_gradient

    sgd = TrainSettings(learning_rate=0.5, epochs=2, batch_size=4, save_steps=100, warmup_ratio=0.0, optimizer="sgd")
    result = train_dpo("tiny-random-llama", PAIRS, tmp_path / "sgd", settings=sgd, progress=False)
    log = json.loads((result.adapter_dir / TRAIN_LOG).read_text())
    assert log["gradient_steps"] == result.steps == 4
    shape = model_shape(load_model("tiny-random-llama", device="cpu"))
    grads = gradient_sums(load_file(str(result.adapter_dir / GRADIENT_SUM)), shape.n_layers, shape.d_mlp)
    scales = ia3_neuron_scales(result.adapter_dir, shape.n_layers, shape.d_mlp)
    deltas = ia3_deltas(scales, shape.n_layers, shape.d_mlp)
    assert grads.abs().sum() > 0
    # the linear schedule decays the rate, so the update is a weighted gradient sum: ranks agree closely
    assert update_follows_gradient(deltas, grads) > 0.9


def test_sgd_and_adam_make_different_updates_and_settings_are_checked(tmp_path):
    from safety_neurons.method.alignment import settings_key

    assert "optimizer" not in settings_key(FAST) and "momentum" not in settings_key(FAST)  # old adapters keep their key
    assert settings_key(TrainSettings(optimizer="sgd", momentum=0.9))["momentum"] == 0.9
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        train_dpo("tiny-random-llama", PAIRS, tmp_path / "x", settings=TrainSettings(optimizer="lion"))
    with pytest.raises(ValueError, match="momentum 0.9 is an SGD setting"):
        train_dpo("tiny-random-llama", PAIRS, tmp_path / "x", settings=TrainSettings(momentum=0.9))
    with pytest.raises(ValueError, match="momentum must be in"):
        train_dpo("tiny-random-llama", PAIRS, tmp_path / "x", settings=TrainSettings(optimizer="sgd", momentum=1.0))
