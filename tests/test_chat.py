import pytest

from safety_neurons.lm.chat import encode_prompts, format_prompt, resolve_template
from safety_neurons.lm.tiny import tiny_tokenizer


def test_auto_uses_the_tokenizers_chat_template_when_it_has_one():
    tok = tiny_tokenizer()
    assert resolve_template(tok, "auto") == "chat"
    assert format_prompt(tok, "hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_auto_falls_back_to_the_documented_plain_template():
    tok = tiny_tokenizer()
    tok.chat_template = None
    assert resolve_template(tok, "auto") == "plain"
    assert format_prompt(tok, "hi") == "### Instruction:\nhi\n\n### Response:\n"


def test_tulu_format_as_the_paper_used():
    assert format_prompt(tiny_tokenizer(), "hi", "tulu") == "<|user|>\nhi\n<|assistant|>\n"


def test_errors_for_empty_prompts_and_unknown_templates():
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="empty prompt"):
        format_prompt(tok, "   ")
    with pytest.raises(ValueError, match="unknown chat template"):
        format_prompt(tok, "hi", "vicuna")
    with pytest.raises(ValueError, match="prompt set is empty"):
        encode_prompts(tok, [])
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt(tok, "hi", "chat")


def test_encoding_adds_no_special_tokens_beyond_the_template():
    tok = tiny_tokenizer()
    (ids,) = encode_prompts(tok, ["ab"])
    assert tok.decode(ids) == format_prompt(tok, "ab")
