import torch

from safety_neurons.lm.tiny import FAMILIES, tiny_model, tiny_tokenizer


def test_tokenizer_round_trips_any_text_one_token_per_byte():
    tok = tiny_tokenizer()
    text = "Héllo, wörld! ✓ tabs\tand\nnewlines"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_tokenizer_specials_and_chat_template():
    tok = tiny_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token) == (0, 2, None)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok(text, add_special_tokens=False)["input_ids"][0] == 1


def test_tiny_models_are_deterministic_per_seed():
    for family in FAMILIES:
        a, b, c = tiny_model(family, seed=0), tiny_model(family, seed=0), tiny_model(family, seed=1)
        wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
        assert torch.equal(wa, wb)
        assert not torch.equal(wa, wc)
