"""Turning a user prompt into model input: the tokenizer's chat template, or a documented fallback.

- `chat`: the tokenizer's own chat template (SmolLM2-Instruct's ChatML, with its default system turn).
- `plain`: for models without a chat template: "### Instruction:\\n{prompt}\\n\\n### Response:\\n".
- `tulu`: the format the paper trained and evaluated in: "<|user|>\\n{prompt}\\n<|assistant|>\\n".
`auto` picks `chat` when the tokenizer has a template, else `plain`.

Every sequence starts with the tokenizer's BOS token exactly once where the tokenizer defines one, whatever its
`add_bos_token` says: Gemma needs it at position 0 (its perplexity on plain text without it is several times higher; see
docs/results.md) and its GGUF-converted tokenizer reports `add_bos_token=False`. A template that writes BOS itself
(Gemma's; SmolLM2's ChatML, whose BOS is `<|im_start|>`) is left as it is.
"""
from __future__ import annotations

# The rule by which text becomes model input, part of every cache key on text (not on token ids): a cached
# answer, evaluation or adapter made under an older rule is recomputed, never reused. Changed when the rule changes.
ENCODING = "bos-first"

TEMPLATES = {
    "plain": "### Instruction:\n{prompt}\n\n### Response:\n",
    "tulu": "<|user|>\n{prompt}\n<|assistant|>\n",
}


def resolve_template(tokenizer, name: str = "auto") -> str:
    if name == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat_template='chat' but this tokenizer has no chat template; use 'plain' or 'tulu'")
    if name not in ("chat", *TEMPLATES):
        raise ValueError(f"unknown chat template {name!r}; use auto, chat, plain or tulu")
    return name


def format_prompt(tokenizer, prompt: str, template: str = "auto") -> str:
    """The full text the model sees before its answer."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"empty prompt {prompt!r}: every prompt needs text")
    kind = resolve_template(tokenizer, template)
    if kind == "chat":
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    else:
        text = TEMPLATES[kind].format(prompt=prompt)
    return text_with_bos(tokenizer, text)


def text_with_bos(tokenizer, text: str) -> str:
    """`text` starting with the tokenizer's BOS token exactly once (unchanged where it has none or the text
    already starts with it). For text tokenized later without special tokens, as trl does."""
    bos = getattr(tokenizer, "bos_token", None)
    return text if not bos or text.startswith(bos) else f"{bos}{text}"


def ids_with_bos(tokenizer, ids: list[int]) -> list[int]:
    """Token ids [n] -> [n] or [n + 1]: the tokenizer's BOS id at position 0 exactly once."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return list(ids) if bos is None or (len(ids) > 0 and ids[0] == bos) else [bos, *ids]


def turn_markers(tokenizer, template: str = "auto") -> tuple[str, ...]:
    """Text that opens a new turn of the template: in an answer it means the model went on writing the
    document (the next instruction, another response) instead of answering. The chat templates' own
    turn tokens are special and dropped from answer text, so none are listed for them."""
    kind = resolve_template(tokenizer, template)
    return {"plain": ("### Instruction", "### Response"), "tulu": ("<|user|>", "<|assistant|>")}.get(kind, ())


def encode_prompts(tokenizer, prompts: list[str], template: str = "auto") -> list[list[int]]:
    """Token ids per prompt: BOS first (see the module), no other special tokens beyond the template's."""
    if len(prompts) == 0:
        raise ValueError("no prompts given: the prompt set is empty")
    texts = [format_prompt(tokenizer, p, template) for p in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
