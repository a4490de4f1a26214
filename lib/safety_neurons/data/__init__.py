"""Prompt data: the prompt-set registry and its deterministic splits, the embedded wheels (model and
prompt files), the hub loaders of the real-model path, and the preference-pair builders."""
