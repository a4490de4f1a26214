"""Load M1 (a base model) and M2 (base + (IA)^3 adapter) as TransformerLens bridges.

TransformerLens 4 replaced `HookedTransformer` with `TransformerBridge`, which wraps the Hugging Face
model in place and keeps the familiar hook names. A neuron is one coordinate of
`blocks.{l}.mlp.hook_post` = act(gate(x)) * up(x), the input of the down projection.

PEFT's feed-forward (IA)^3 multiplies that input *inside* the down_proj wrapper, so a hook would
miss the scaling. We fold it exactly into the rows of up_proj instead
(act(g) * (l*u) == l * (act(g)*u)), so M2's hook_post is the scaled activation l * a.
Folding into down_proj (what PEFT's merge does) would leave hook_post unscaled: we never do that.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import TINY_MODEL

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
BASE_FINGERPRINT = "base_fingerprint.json"
GATED_MLP = ("gate_proj", "up_proj", "down_proj")
IA3_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(mlp|self_attn)\.(\w+)\.ia3_l(?:\.\w+)?$")


class ModelLoadError(ValueError):
    """A model or adapter that cannot be used for this study, with what to do instead."""


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_mlp: int
    d_model: int

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_mlp


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available here; use device='cpu' or 'auto'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def checkpoint_source(name: str, *, what: str = "model", hint: str = "") -> str:
    """A local checkpoint folder (checked for config.json) or a hub id (org/name, passed through);
    anything else is refused, naming the forms that work (`hint` lists more, e.g. embedded names)."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a folder but holds no config.json: not a Hugging Face model checkpoint")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"{what} folder {name!r} does not exist: it is neither an existing folder nor a hub id")
    if name.count("/") != 1:
        raise ModelLoadError(f"unknown {what} {name!r}, neither an existing folder nor a hub id: use {hint}"
                             "a local checkpoint folder, or a hub id of the form org/name")
    return name


def load_hf_model(name: str, *, dtype: torch.dtype = torch.float32, attn_implementation: str = "eager"):
    """(model, tokenizer) for the embedded model, the tiny smoke model, a local dir or a hub id.
    Eager attention is what a TransformerBridge runs (it re-implements attention to hook it); training,
    which needs no attention hooks, asks for "sdpa" (about 10% faster per step on the CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == TINY_MODEL:
        from .tiny import tiny_model, tiny_tokenizer

        model = tiny_model("llama").to(dtype)
        model.set_attn_implementation(attn_implementation)
        return model, tiny_tokenizer()
    source, known = _model_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attn_implementation)
    except OSError as exc:
        raise ModelLoadError(
            f"could not load model {name!r}: {exc}. Use {known}"
            "a local checkpoint folder, or a hub id on a machine that reaches the hub."
        ) from exc
    return model.eval(), tokenizer


def load_tokenizer(name: str):
    """The tokenizer alone of a model load_hf_model would load (same names, same errors), without its weights."""
    if name == TINY_MODEL:
        from .tiny import tiny_tokenizer

        return tiny_tokenizer()
    from transformers import AutoTokenizer

    source, known = _model_source(name)
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise ModelLoadError(f"could not load the tokenizer of {name!r}: {exc}. Use {known}"
                             "a local checkpoint folder, or a hub id on a machine that reaches the hub.") from exc


def _model_source(name: str) -> tuple[str, str]:
    """Where model `name` (embedded, a local folder or a hub id) loads from, and the names that work, for errors."""
    from ..data.embedded import EMBEDDED_MODELS, embedded_model_dir

    known = f"{', '.join(map(repr, EMBEDDED_MODELS))} (embedded), {TINY_MODEL!r} (tiny, for tests), "
    return (str(embedded_model_dir(name)) if name in EMBEDDED_MODELS else checkpoint_source(name, hint=known)), known


def mlp_modules(model) -> list[torch.nn.Module]:
    """The MLP of every decoder layer, checking it is gated (gate_proj, up_proj, down_proj)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    arch = type(model).__name__
    if layers is None:
        raise ModelLoadError(
            f"{arch} has no model.layers decoder stack; supported are gated-MLP causal LMs "
            "(Llama, Mistral, Gemma, Qwen2 families)"
        )
    mlps = []
    for i, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        missing = [n for n in GATED_MLP if not isinstance(getattr(mlp, n, None), torch.nn.Module)]
        if mlp is None or missing:
            raise ModelLoadError(
                f"{arch} layer {i} has no gated MLP (missing {', '.join(missing) or 'mlp'}): this study defines a neuron "
                "as act(gate(x)) * up(x) feeding down_proj. Use a Llama, Mistral, Gemma or Qwen2 family model."
            )
        mlps.append(mlp)
    return mlps


def model_shape(model) -> ModelShape:
    """Layers, neurons per layer and width, for a HF model or a bridge."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "d_mlp"):
        return ModelShape(int(cfg.n_layers), int(cfg.d_mlp), int(cfg.d_model))
    mlps = mlp_modules(model)
    return ModelShape(len(mlps), mlps[0].up_proj.out_features, mlps[0].up_proj.in_features)


def base_fingerprint(model) -> str:
    """A cheap identity of base weights: shapes plus a few tensors' bytes.

    Two bases of the same architecture (say, two seeds) have equal shapes, so an adapter check on
    shapes alone would let an adapter trained on one silently run on the other.
    """
    digest = hashlib.sha256()
    shape = model_shape(model)
    digest.update(f"{type(model).__name__}:{shape}".encode())
    mlp0 = mlp_modules(model)[0]
    for tensor in (model.get_input_embeddings().weight[:8], mlp0.up_proj.weight[:8], mlp0.down_proj.weight[:, :8]):
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def write_base_fingerprint(adapter_dir: str | Path, base_model, base_name: str) -> None:
    from ..io import write_json_atomic

    write_json_atomic(Path(adapter_dir) / BASE_FINGERPRINT, {"base": base_name, "fingerprint": base_fingerprint(base_model)})


def adapter_weights_path(adapter_dir: str | Path) -> Path:
    """The adapter's weights file (safetensors, else PEFT's older .bin)."""
    path = Path(adapter_dir).expanduser()
    weights = next((path / w for w in ADAPTER_WEIGHTS if (path / w).exists()), None)
    if weights is None:
        raise ModelLoadError(f"{path} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)}); was training interrupted?")
    return weights


def adapter_digest(adapter_dir: str | Path | None) -> str | None:
    """sha256 of an adapter's weights (None for no adapter): what cached artifacts of a model are keyed by."""
    from ..io import sha256_file

    return None if adapter_dir is None else sha256_file(adapter_weights_path(adapter_dir))


def read_ia3_adapter(adapter_dir: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter's config and its (IA)^3 vectors, with clear errors for anything else."""
    path = Path(adapter_dir).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"adapter folder {path} does not exist (train it first, or check the run directory)")
    cfg_path = path / ADAPTER_CONFIG
    if not cfg_path.exists():
        raise ModelLoadError(f"{path} has no {ADAPTER_CONFIG}: not a PEFT adapter folder")
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type") != "IA3":
        raise ModelLoadError(f"adapter {path} is {config.get('peft_type')!r}, not IA3: this study patches (IA)^3-scaled neurons")
    weights = adapter_weights_path(path)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    return config, state


def fold_ia3(model, adapter_dir: str | Path) -> int:
    """Fold an (IA)^3 adapter into `model`'s weights, exactly; returns the number of vectors folded.

    Feed-forward scaling of down_proj's input goes into up_proj's rows (so hook_post sees it);
    output scaling of any linear goes into its rows; input scaling of any other linear into its columns.
    """
    config, state = read_ia3_adapter(adapter_dir)
    check_adapter_base(model, Path(adapter_dir), config)
    feedforward = set(as_name_list(config.get("feedforward_modules")))
    layers = model.model.layers
    mlp_modules(model)
    folded = 0
    with torch.no_grad():
        for key, vec in state.items():
            match = IA3_KEY.search(key)
            if match is None:
                raise ModelLoadError(f"adapter tensor {key!r} is not an (IA)^3 vector of a decoder layer: cannot fold it")
            layer_idx, block, proj = int(match[1]), match[2], match[3]
            if layer_idx >= len(layers):
                raise ModelLoadError(f"adapter has a vector for layer {layer_idx} but the base model has {len(layers)} layers: trained on another base?")
            parent = getattr(layers[layer_idx], block)
            linear = getattr(parent, proj, None)
            if not isinstance(linear, torch.nn.Linear):
                raise ModelLoadError(f"adapter targets layers.{layer_idx}.{block}.{proj}, which the base model does not have")
            scale = vec.detach().float().flatten()
            is_ff = proj in feedforward
            if is_ff and proj == "down_proj":
                target, rows = parent.up_proj, True
            else:
                target, rows = linear, not is_ff
            expected = target.out_features if rows else target.in_features
            if scale.numel() != expected:
                raise ModelLoadError(
                    f"adapter vector {key} has {scale.numel()} entries but the base's {proj} needs {expected}: "
                    "the adapter was trained on another base model"
                )
            _scale_linear(target, scale, rows)
            folded += 1
    if folded == 0:
        raise ModelLoadError(f"adapter {adapter_dir} holds no (IA)^3 vectors")
    return folded


def _scale_linear(linear: torch.nn.Linear, scale: torch.Tensor, rows: bool) -> None:
    w = linear.weight
    s = scale.to(device=w.device)
    if rows:
        w.copy_((w.float() * s[:, None]).to(w.dtype))
        if linear.bias is not None:
            linear.bias.copy_((linear.bias.float() * s).to(linear.bias.dtype))
    else:
        w.copy_((w.float() * s[None, :]).to(w.dtype))


def check_adapter_base(model, adapter_dir: Path, config: dict) -> None:
    fp_path = adapter_dir / BASE_FINGERPRINT
    if fp_path.exists():
        recorded = json.loads(fp_path.read_text())
        if recorded.get("fingerprint") != base_fingerprint(model):
            raise ModelLoadError(
                f"adapter {adapter_dir} was trained on base {recorded.get('base')!r}, whose weights differ from the model "
                "loaded here: load the adapter on the base it was trained on"
            )


def as_name_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def to_bridge(hf_model, tokenizer, *, name: str = "model", device: torch.device | str = "cpu"):
    """Wrap a HF model in a TransformerBridge (in place: the bridge and the HF model share weights)."""
    from transformer_lens.model_bridge import TransformerBridge

    mlp_modules(hf_model)
    if tokenizer.pad_token is None:
        # Batched generation needs a pad id; EOS is the conventional stand-in and is masked out.
        tokenizer.pad_token = tokenizer.eos_token
    own_bos = tokenizer.bos_token
    bridge = TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=tokenizer, device=str(device), dtype=next(hf_model.parameters()).dtype)
    if own_bos is None and bridge.tokenizer.bos_token is not None:
        # TransformerLens stands EOS in for a missing BOS; the study prepends the model's own BOS only (lm/chat.py)
        bridge.tokenizer.bos_token = None
    bridge.eval()
    return bridge


def load_model(name: str, adapter: str | Path | None = None, *, device: str = "auto", dtype: str = "auto"):
    """A TransformerBridge for `name` (embedded name, tiny name, local dir or hub id), with an (IA)^3
    adapter folded in when given. hook_post of the result includes the adapter's scaling."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    # Fold in fp32 and cast afterwards, so an adapter loads identically whatever the run dtype.
    hf_model, tokenizer = load_hf_model(name, dtype=torch.float32)
    mlp_modules(hf_model)
    if adapter is not None:
        fold_ia3(hf_model, adapter)
    hf_model = hf_model.to(device=dev, dtype=torch_dtype)
    return to_bridge(hf_model, tokenizer, name=name, device=dev)

