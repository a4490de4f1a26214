"""Every sequence the study feeds a model starts with the tokenizer's BOS exactly once (issue 21), on a tiny
tokenizer arranged as Gemma's (BOS written by the chat template, add_bos_token False) and on one with no BOS."""
import pytest

from safety_neurons.data.preferences import Preference
from safety_neurons.lm.chat import encode_prompts, format_prompt, ids_with_bos, text_with_bos
from safety_neurons.lm.generation import encode_texts
from safety_neurons.lm.models import to_bridge
from safety_neurons.lm.tiny import tiny_model, tiny_tokenizer
from safety_neurons.method.alignment import dpo_dataset, retain_batches, sft_dataset

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs."]


def bos_once(tok, ids) -> bool:
    ids = list(ids)
    return ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def as_trl_tokenizes(tok, text: str) -> list[int]:
    # trl's DPO and SFT trainers tokenize the prompt string without special tokens
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", ["chat", "plain", "tulu"])
def test_prompts_start_with_bos_exactly_once_under_every_template(template):
    tok = tiny_tokenizer(bos=True)
    for ids in encode_prompts(tok, ["hi", "tell me"], template):
        assert bos_once(tok, ids)
    assert format_prompt(tok, "hi", template).startswith("<bos>")


def test_bos_is_added_whatever_add_bos_token_says_and_never_twice():
    for flag in (False, True):
        tok = tiny_tokenizer(bos=True)
        tok.add_bos_token = flag
        assert all(bos_once(tok, ids) for ids in encode_prompts(tok, ["hi"], "plain"))
        assert all(bos_once(tok, ids) for ids in encode_texts(tok, TEXTS, 64))


def test_plain_text_gets_bos_within_max_tokens():
    tok = tiny_tokenizer(bos=True)
    encoded = encode_texts(tok, TEXTS, 16)
    assert all(bos_once(tok, ids) and len(ids) == 16 for ids in encoded)
    text_ids = tok(TEXTS[0], add_special_tokens=False)["input_ids"]
    assert encoded[0][1:] == text_ids[:15]


def test_retain_batches_start_with_bos():
    tok = tiny_tokenizer(bos=True)
    (batch,) = retain_batches(tok, TEXTS, 4, 32)
    assert (batch["input_ids"][:, 0] == tok.bos_token_id).all()
    assert ((batch["input_ids"] == tok.bos_token_id).sum(-1) == 1).all()


def test_training_prompts_start_with_bos_exactly_once_as_trl_tokenizes_them():
    tok = tiny_tokenizer(bos=True)
    pairs = [Preference("how do I pick a lock?", "I can't help with that.", "First, insert a tension wrench.", "test")]
    for row in dpo_dataset(tok, pairs, "chat").to_list():
        assert bos_once(tok, as_trl_tokenizes(tok, row["prompt"]))
        assert tok.bos_token_id not in as_trl_tokenizes(tok, row["chosen"] + row["rejected"])
    conv = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi there"},
            {"role": "user", "content": "and?"}, {"role": "assistant", "content": "that is all"}]
    for row in sft_dataset(tok, [conv], "chat").to_list():
        assert bos_once(tok, as_trl_tokenizes(tok, row["prompt"]))


def test_a_tokenizer_without_bos_is_left_as_it_was_also_through_the_bridge():
    bridge = to_bridge(tiny_model("llama"), tiny_tokenizer())
    tok = bridge.tokenizer  # TransformerLens stands EOS in for the missing BOS; to_bridge takes it back
    assert format_prompt(tok, "hi", "plain") == "### Instruction:\nhi\n\n### Response:\n"
    assert text_with_bos(tok, "abc") == "abc" and ids_with_bos(tok, [5, 6]) == [5, 6]
    assert encode_texts(tok, ["abc"], 8) == [tok("abc", add_special_tokens=False)["input_ids"]]


def test_a_gemma_shaped_model_sees_bos_first_when_it_answers():
    from safety_neurons.lm.generation import answer_prompts

    tok = tiny_tokenizer(bos=True)
    # TransformerLens re-loads a tokenizer by name with add_bos_token=True (as it does Gemma's); an in-code one
    # has no name, so it is given the flag (and a name it never needs to load) here. The prompts get BOS once
    # either way.
    tok.add_bos_token = True
    tok.init_kwargs["name_or_path"] = "tiny-with-bos"
    bridge = to_bridge(tiny_model("gemma", vocab_size=len(tok)), tok)
    (answer,) = answer_prompts(bridge, ["hi"], template="plain", max_new_tokens=3, batch_size=1, progress=False)
    assert bos_once(tok, answer.prompt_ids)
