"""Tiny random models and a byte-level tokenizer, built in code.

The `smoke` profile and the tests run every notebook and every equivalence check on these, so
nothing is downloaded and each model builds in milliseconds. The four families cover the gated-MLP
architectures the study supports (Llama, Mistral, Gemma, Qwen2).
"""
from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
FAMILIES = ("llama", "mistral", "gemma", "qwen2")


def tiny_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges (one token per byte) plus ChatML specials.

    Built from a fixed vocabulary rather than trained, so it is identical on every machine.
    Ids: 0-2 the specials (<|endoftext|> = pad, <|im_end|> = eos), 3-258 the 256 bytes. It has no BOS
    token, like Qwen2's: TransformerLens would otherwise re-load the tokenizer by name to force one.
    With `bos`, Gemma's arrangement for the BOS tests: a `<bos>` token (id 259, so a model needs
    vocab_size=260) that the chat template writes first, and `add_bos_token` False, as Gemma's
    GGUF-converted tokenizer reports.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_tokens = [_byte_char(b) for b in range(256)]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({tok: i + len(SPECIAL_TOKENS) for i, tok in enumerate(byte_tokens)})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    if bos:
        tok.add_special_tokens({"bos_token": "<bos>"})
        tok.chat_template = "{{ bos_token }}" + CHATML_TEMPLATE
        tok.add_bos_token = False
    return tok


def _byte_char(b: int) -> str:
    """The printable character the ByteLevel pre-tokenizer uses for byte `b` (GPT-2's scheme):
    printable Latin-1 bytes stand for themselves, the others are shifted above 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), ord("\u00ff") + 1)]
    if b in printable:
        return chr(b)
    return chr(256 + sum(1 for x in range(b) if x not in printable))


def tiny_config(family: str = "llama", *, n_layers: int = 2, d_model: int = 32, d_mlp: int = 64, vocab_size: int = 259):
    """A tiny config of one supported family, with eager attention (what TransformerBridge uses)."""
    from transformers import GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    if family == "llama":
        cfg = LlamaConfig(**common)
    elif family == "mistral":
        cfg = MistralConfig(**common, sliding_window=None)
    elif family == "gemma":
        cfg = GemmaConfig(**common, head_dim=d_model // 4)
    elif family == "qwen2":
        cfg = Qwen2Config(**common)
    else:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {', '.join(FAMILIES)}")
    cfg._attn_implementation = "eager"
    return cfg


def tiny_model(family: str = "llama", seed: int = 0, **shape):
    """A randomly initialised tiny causal LM (fp32, eval mode), the same for the same seed."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(family, **shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
        # Random init gives near-uniform logits; a wider spread makes greedy generation
        # less tie-prone and so makes equality tests meaningful.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.2)
    return model.eval()
