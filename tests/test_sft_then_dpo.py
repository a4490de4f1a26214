"""The paper's pipeline on a tiny Gemma-shaped model with a BOS token: SFT (IA)^3 folded into M1, then DPO (IA)^3 on
M1, loaded through the loader users call. M1's hook_post is the base's times l_sft, M2's the base's times
l_sft * l_dpo; the bridge's logits equal PEFT's; patching every neuron of M1 with M2's values gives M2."""
import numpy as np
import pytest
import torch

from safety_neurons.data.preferences import Preference
from safety_neurons.lm.chat import encode_prompts
from safety_neurons.lm.generation import greedy_generate
from safety_neurons.lm.models import load_model
from safety_neurons.lm.tiny import tiny_model, tiny_tokenizer
from safety_neurons.method.alignment import TrainSettings, save_merged_model, train_dpo, train_sft
from safety_neurons.method.patching import fast_patched_generate, ia3_neuron_scales

pytestmark = pytest.mark.usefixtures("one_thread")

N_LAYERS, D_MLP = 2, 64
FAST = TrainSettings(learning_rate=0.2, epochs=2, batch_size=4, save_steps=100)
CONVERSATIONS = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
                 for i in range(8)]
PAIRS = [Preference(f"request number {i}", "No, I can't.", f"Sure, here is item {i}.", "test") for i in range(8)]
PROMPTS = ["request number 1", "tell me about item 4", "question 7"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """(base, M1 = base + SFT folded, DPO adapter dir): folders a user would pass as model names."""
    root = tmp_path_factory.mktemp("gemma")
    tok = tiny_tokenizer(bos=True)
    tiny_model("gemma", vocab_size=len(tok)).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    base = str(root / "base")
    sft = train_sft(base, CONVERSATIONS, root / "sft", template="plain", settings=FAST, progress=False)
    m1 = str(save_merged_model(base, sft.adapter_dir, root / "m1"))
    dpo = train_dpo(m1, PAIRS, root / "dpo", template="plain", settings=FAST, progress=False)
    return base, m1, sft.adapter_dir, dpo.adapter_dir


def mlp_inputs_and_posts(bridge, ids: torch.Tensor):
    """Each layer's MLP input (HF pre-hook) and hook_post (the bridge's cache) for one forward."""
    inputs = {}
    layers = bridge.original_model.model.layers
    handles = [layer.mlp.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args[0].detach()))
               for i, layer in enumerate(layers)]
    try:
        _, cache = bridge.run_with_cache(ids)
    finally:
        for h in handles:
            h.remove()
    return inputs, [cache[f"blocks.{i}.mlp.hook_post"] for i in range(len(layers))]


def base_post(base_bridge, layer: int, x: torch.Tensor) -> torch.Tensor:
    mlp = base_bridge.original_model.model.layers[layer].mlp
    return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)


def test_the_sft_and_dpo_scales_both_move(pipeline):
    base, m1, sft, dpo = pipeline
    for adapter in (sft, dpo):
        scales = ia3_neuron_scales(adapter, N_LAYERS, D_MLP)
        assert max(float((s - 1).abs().max()) for s in scales.values()) > 1e-3


def test_m1_carries_l_sft_and_m2_carries_l_sft_times_l_dpo(pipeline):
    base, m1, sft, dpo = pipeline
    l_sft = ia3_neuron_scales(sft, N_LAYERS, D_MLP)
    l_dpo = ia3_neuron_scales(dpo, N_LAYERS, D_MLP)
    base_bridge = load_model(base, device="cpu")
    ids = torch.tensor(encode_prompts(base_bridge.tokenizer, ["hello there"], "plain"))
    for bridge, scale in ((load_model(m1, device="cpu"), l_sft),
                          (load_model(m1, adapter=dpo, device="cpu"), {i: l_sft[i] * l_dpo[i] for i in l_sft})):
        inputs, posts = mlp_inputs_and_posts(bridge, ids)
        for layer in range(N_LAYERS):
            with torch.no_grad():
                expected = base_post(base_bridge, layer, inputs[layer]) * scale[layer]
            torch.testing.assert_close(posts[layer], expected, rtol=1e-4, atol=1e-5)


def test_the_bridge_of_m2_gives_the_logits_of_peft_with_the_dpo_adapter_on_m1(pipeline):
    from peft import PeftModel

    from safety_neurons.lm.models import load_hf_model

    base, m1, sft, dpo = pipeline
    bridge = load_model(m1, adapter=dpo, device="cpu")
    hf, tok = load_hf_model(m1)
    peft = PeftModel.from_pretrained(hf, str(dpo)).eval()
    ids = torch.tensor(encode_prompts(tok, ["hello there"], "plain"))
    with torch.no_grad():
        torch.testing.assert_close(bridge(ids), peft(input_ids=ids).logits, rtol=1e-4, atol=1e-4)


def test_patching_every_neuron_of_m1_with_m2s_values_reproduces_m2(pipeline):
    base, m1, sft, dpo = pipeline
    m1_bridge = load_model(m1, device="cpu")
    m2_bridge = load_model(m1, adapter=dpo, device="cpu")
    ids = encode_prompts(m1_bridge.tokenizer, PROMPTS, "plain")
    assert all(row[0] == m1_bridge.tokenizer.bos_token_id for row in ids)
    m2 = greedy_generate(m2_bridge, ids, max_new_tokens=6, batch_size=2, progress=False)
    m1_answers = greedy_generate(m1_bridge, ids, max_new_tokens=6, batch_size=2, progress=False)
    assert [g.completion_ids for g in m1_answers] != [g.completion_ids for g in m2]  # else the test proves nothing
    scales = ia3_neuron_scales(dpo, N_LAYERS, D_MLP, base=m1_bridge)
    every = np.array([(layer, i) for layer in range(N_LAYERS) for i in range(D_MLP)])
    patched = fast_patched_generate(m1_bridge, scales, ids, every, max_new_tokens=6, batch_size=2, progress=False)
    assert [g.completion_ids for g in patched] == [g.completion_ids for g in m2]
