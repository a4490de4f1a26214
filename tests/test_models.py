"""Model loading: hook_post is the down projection's input, (IA)^3 folds exactly, bad inputs fail clearly."""
import copy
import json

import pytest
import torch

from safety_neurons.lm.generation import greedy_generate
from safety_neurons.lm.models import (
    ModelLoadError,
    fold_ia3,
    load_model,
    load_tokenizer,
    mlp_modules,
    model_shape,
    to_bridge,
    write_base_fingerprint,
)
from safety_neurons.lm.tiny import FAMILIES, tiny_model, tiny_tokenizer

IDS = torch.tensor([[1, 60, 61, 62, 63, 64, 65, 66], [0, 0, 0, 1, 70, 71, 72, 73]])
MASK = (torch.arange(8)[None, :] >= torch.tensor([[0], [3]])).long()


def capture_down_proj_inputs(model, run):
    """Run `run()` and return the input of every layer's down projection (what hook_post must equal)."""
    seen = {}
    handles = [
        mlp.down_proj.register_forward_hook(lambda mod, args, out, i=i: seen.__setitem__(i, args[0].detach().clone()))
        for i, mlp in enumerate(mlp_modules(model))
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


def hook_posts(bridge, ids=IDS, mask=MASK):
    names = [f"blocks.{l}.mlp.hook_post" for l in range(bridge.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = bridge.run_with_cache(ids, attention_mask=mask, names_filter=names)
    return logits, [cache[n] for n in names]


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_post_is_the_input_of_the_hf_down_projection(family):
    reference = tiny_model(family)
    bridge = to_bridge(tiny_model(family), tiny_tokenizer())
    expected = capture_down_proj_inputs(reference, lambda: reference(input_ids=IDS, attention_mask=MASK))
    logits, posts = hook_posts(bridge)
    for layer, post in enumerate(posts):
        torch.testing.assert_close(post, expected[layer], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, reference(input_ids=IDS, attention_mask=MASK).logits.detach(), rtol=1e-5, atol=1e-5)


def make_ia3_adapter(base, path, targets=("gate_proj", "up_proj", "down_proj"), seed=0):
    """A PEFT (IA)^3 adapter on the MLP with random (non-identity) scales, saved to `path`."""
    from peft import IA3Config, get_peft_model

    config = IA3Config(task_type="CAUSAL_LM", target_modules=list(targets), feedforward_modules=["down_proj"])
    peft_model = get_peft_model(copy.deepcopy(base), config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "ia3_l" in name:
                param.copy_(1 + 0.5 * torch.randn(param.shape, generator=gen))
    peft_model.save_pretrained(path)
    return peft_model.eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("targets", [("down_proj",), ("gate_proj", "up_proj", "down_proj")])
def test_folded_ia3_matches_the_peft_model_and_hook_post_includes_the_scaling(family, targets, tmp_path):
    base = tiny_model(family)
    peft_model = make_ia3_adapter(base, tmp_path, targets)
    folded = copy.deepcopy(base)
    assert fold_ia3(folded, tmp_path) == len(targets) * model_shape(base).n_layers
    bridge = to_bridge(folded, tiny_tokenizer())

    # PEFT scales down_proj's input inside its wrapper: the wrapped base layer sees l * a.
    scaled = {}
    layers = peft_model.base_model.model.model.layers
    handles = [
        layer.mlp.down_proj.base_layer.register_forward_hook(lambda m, a, o, i=i: scaled.__setitem__(i, a[0].detach().clone()))
        for i, layer in enumerate(layers)
    ]
    with torch.no_grad():
        peft_logits = peft_model(input_ids=IDS, attention_mask=MASK).logits
    for h in handles:
        h.remove()

    logits, posts = hook_posts(bridge)
    torch.testing.assert_close(logits, peft_logits, rtol=1e-5, atol=1e-5)
    for layer, post in enumerate(posts):
        torch.testing.assert_close(post, scaled[layer], rtol=1e-5, atol=1e-5)
    # and it really differs from the unadapted model's activations
    _, base_posts = hook_posts(to_bridge(tiny_model(family), tiny_tokenizer()))
    assert (base_posts[0] - posts[0]).abs().max() > 1e-3


def test_load_model_folds_an_adapter_by_path(tmp_path):
    peft_model = make_ia3_adapter(tiny_model("llama"), tmp_path)
    bridge = load_model("tiny-random-llama", adapter=tmp_path, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(bridge(IDS, attention_mask=MASK), peft_model(input_ids=IDS, attention_mask=MASK).logits, rtol=1e-5, atol=1e-5)


def test_non_gated_mlp_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=259))
    with pytest.raises(ModelLoadError, match="gated-MLP|Llama, Mistral, Gemma or Qwen2"):
        to_bridge(gpt2, tiny_tokenizer())


def test_adapter_for_another_shape_is_refused(tmp_path):
    make_ia3_adapter(tiny_model("llama", d_mlp=48), tmp_path)
    with pytest.raises(ModelLoadError, match="trained on another base"):
        fold_ia3(tiny_model("llama"), tmp_path)


def test_adapter_for_another_base_with_the_same_shape_is_refused(tmp_path):
    base = tiny_model("llama", seed=0)
    make_ia3_adapter(base, tmp_path)
    write_base_fingerprint(tmp_path, base, "tiny seed 0")
    fold_ia3(tiny_model("llama", seed=0), tmp_path)  # the right base loads
    with pytest.raises(ModelLoadError, match="trained on base 'tiny seed 0'"):
        fold_ia3(tiny_model("llama", seed=1), tmp_path)


def test_missing_or_foreign_adapters_get_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        fold_ia3(tiny_model("llama"), tmp_path / "nope")
    with pytest.raises(ModelLoadError, match="not a PEFT adapter"):
        fold_ia3(tiny_model("llama"), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ModelLoadError, match="not IA3"):
        fold_ia3(tiny_model("llama"), tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ModelLoadError, match="no adapter weights"):
        fold_ia3(tiny_model("llama"), tmp_path)


def test_unknown_model_folder_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model 'gpt7'.*org/name"):
        load_model("gpt7", device="cpu")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "missing" / "model"), device="cpu")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_load_tokenizer_resolves_names_as_load_model_does(tmp_path):
    from safety_neurons.config import TINY_MODEL

    text = "How do I pick a lock?"
    expected = tiny_tokenizer()(text)["input_ids"]
    assert load_tokenizer(TINY_MODEL)(text)["input_ids"] == expected
    tiny_model("llama").save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    assert load_tokenizer(str(tmp_path / "model"))(text)["input_ids"] == expected
    with pytest.raises(ModelLoadError, match="unknown model 'gpt7'.*org/name"):
        load_tokenizer("gpt7")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing" / "model"))


def test_model_shape_counts_neurons():
    shape = model_shape(to_bridge(tiny_model("llama", n_layers=3, d_mlp=40), tiny_tokenizer()))
    assert (shape.n_layers, shape.d_mlp, shape.n_neurons) == (3, 40, 120)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_bridge_greedy_generation_equals_hf_generate_batched_with_left_padding(family):
    tok = tiny_tokenizer()
    reference = tiny_model(family)
    bridge = to_bridge(tiny_model(family), tok)
    prompts = [[1, 40, 41, 42, 43, 44, 45, 46, 47, 48], [1, 50, 51], [1, 60, 61, 62, 63, 64], [1, 70]]
    batched = greedy_generate(bridge, prompts, max_new_tokens=12, batch_size=3, progress=False)
    for prompt, gen in zip(prompts, batched):
        # the reference runs each prompt alone: no padding at all
        out = reference.generate(input_ids=torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                 eos_token_id=[2], pad_token_id=0)[0, len(prompt):].tolist()
        if 2 in out:
            out = out[: out.index(2) + 1]
        assert gen.completion_ids == out
        assert gen.prompt_ids == prompt
    assert all(len(g.completion_ids) > 0 for g in batched)
