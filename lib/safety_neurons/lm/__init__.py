"""Language-model plumbing: load a model (HF or TransformerBridge, with (IA)^3 folded in), prompt it,
generate in batches, size batches to memory, split work across processes, and build tiny test models."""
