"""Turning a user prompt into model input: the tokenizer's chat template, or a documented fallback.

- `chat`: the tokenizer's own chat template (SmolLM2-Instruct's ChatML, with its default system turn).
- `plain`: for models without a chat template: "### Instruction:\\n{prompt}\\n\\n### Response:\\n".
- `tulu`: the format the paper trained and evaluated in: "<|user|>\\n{prompt}\\n<|assistant|>\\n".
`auto` picks `chat` when the tokenizer has a template, else `plain`.
"""
from __future__ import annotations

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
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    text = TEMPLATES[kind].format(prompt=prompt)
    bos = getattr(tokenizer, "bos_token", None)
    return f"{bos}{text}" if bos and getattr(tokenizer, "add_bos_token", True) else text


def encode_prompts(tokenizer, prompts: list[str], template: str = "auto") -> list[list[int]]:
    """Token ids per prompt, without extra special tokens (the template already has them)."""
    if len(prompts) == 0:
        raise ValueError("no prompts given: the prompt set is empty")
    texts = [format_prompt(tokenizer, p, template) for p in prompts]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
