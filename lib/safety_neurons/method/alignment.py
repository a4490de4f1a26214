"""Alignment with (IA)^3 on the MLP neurons only: DPO (and SFT when a profile names SFT data).

(IA)^3 multiplies each neuron's activation by a learned scale (PEFT's feed-forward IA3 on down_proj's
input), so M2 differs from M1 only by per-neuron scaling and every neuron keeps its meaning: the
premise of the whole study. The DPO reference is M1 itself, the same weights with the adapter
disabled (no second copy in memory), and its log-probabilities are computed once before training.

Training is resumable: checkpoints go under <out>/checkpoints and a restarted run continues from the
last one. The finished adapter is written to a staging folder and renamed to <out>/adapter, so an
adapter folder that exists is always complete.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.preferences import Preference
from ..io import claim_dir, content_key, read_json, write_json_atomic
from ..lm.chat import ENCODING
from ..lm.sharding import done_by_main, is_sharded
from .cpu_logprobs import dense_cpu_logprobs

IA3_TARGETS = ("down_proj",)
ADAPTER_DIRNAME = "adapter"
TRAIN_LOG = "train_log.json"


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float = 5e-3
    epochs: float = 2.0
    batch_size: int = 8
    grad_accum: int = 1
    beta: float = 0.1
    # Weight of an NLL term on the chosen answers added to the DPO loss (trl's "sft" loss type,
    # as in RPO); 0 is pure DPO. See the alignment notebook for why the embedded profiles use it.
    sft_weight: float = 0.0
    max_length: int = 256
    seed: int = 0
    save_steps: int = 10
    warmup_ratio: float = 0.1
    # Adam's epsilon. At the default 1e-8 Adam moves every neuron's scale by about the learning rate
    # per step whatever its gradient; an epsilon near the large gradients keeps the update proportional
    # to the gradient for the many neurons that barely matter (see the alignment notebook).
    adam_epsilon: float = 1e-8
    # Weight of a KL(M1 || M2) term on general text (the "retain" texts) added to every DPO step:
    # it anchors M2's next-token distribution on ordinary text to M1's, so aligning does not cost
    # general language modelling (0: no such term, as in the paper).
    retain_weight: float = 0.0
    retain_batch_size: int = 4
    retain_max_tokens: int = 128
    # The optimiser: "adamw" (transformers' AdamW, weight decay 0: Adam) or "sgd" (torch SGD with
    # `momentum`), whose steps are proportional to the gradient (the recipe study, notebook 09).
    optimizer: str = "adamw"
    momentum: float = 0.0


OPTIMIZERS = ("adamw", "sgd")
# Fields added after adapters were trained: at these values they leave a settings key as it was, so a
# finished adapter is not retrained because the settings learned to name what it already used.
_KEY_NEUTRAL = {"optimizer": "adamw", "momentum": 0.0}
GRADIENT_SUM = "gradient_sum.safetensors"


def settings_key(settings: TrainSettings) -> dict[str, Any]:
    """The settings as they enter an adapter's key (fields at their key-neutral values left out)."""
    return {k: v for k, v in asdict(settings).items() if not (k in _KEY_NEUTRAL and v == _KEY_NEUTRAL[k])}


def check_settings(settings: TrainSettings) -> None:
    if settings.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {settings.optimizer!r}; use one of {', '.join(OPTIMIZERS)}")
    if not 0 <= settings.momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {settings.momentum!r}")
    if settings.optimizer != "sgd" and settings.momentum != 0:
        raise ValueError(f"momentum {settings.momentum} is an SGD setting; the {settings.optimizer} optimizer takes none")


@dataclass
class TrainResult:
    adapter_dir: Path
    seconds: float
    steps: int
    step_seconds: float
    log: list[dict[str, Any]] = field(default_factory=list)
    resumed: bool = False


def ia3_mlp_config():
    """(IA)^3 on the MLP neurons only: one learned scale per neuron, applied to down_proj's input."""
    from peft import IA3Config

    return IA3Config(task_type="CAUSAL_LM", target_modules=list(IA3_TARGETS), feedforward_modules=list(IA3_TARGETS))


def use_bf16(device: torch.device) -> bool:
    """bf16 autocast only where the hardware does it natively: on a CPU it makes a DPO step ~14x slower."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def random_ia3_adapter(base_model_name: str, out: str | Path, *, seed: int = 0, spread: float = 0.1) -> Path:
    """An untrained MLP-neuron (IA)^3 adapter with scales 1 + spread * N(0, 1), saved (with its base
    fingerprint) to `out`: a stand-in M2 for benchmarks when no trained one is at hand."""
    from peft import get_peft_model

    from ..lm.models import load_hf_model, write_base_fingerprint

    base, _ = load_hf_model(base_model_name)
    peft_model = get_peft_model(base, ia3_mlp_config())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "ia3_l" in name:
                param.copy_(1 + spread * torch.randn(param.shape, generator=gen))
    peft_model.save_pretrained(out)
    write_base_fingerprint(out, peft_model.get_base_model(), base_model_name)
    return Path(out)


def adapter_done(out_dir: str | Path) -> bool:
    return (Path(out_dir) / ADAPTER_DIRNAME / TRAIN_LOG).exists()


def dpo_dataset(tokenizer, pairs: list[Preference], template: str):
    """trl's standard (non-conversational) format: the prompt already carries the chat template,
    so training sees exactly the text generation sees."""
    from datasets import Dataset

    from ..lm.chat import format_prompt

    if not pairs:
        raise ValueError("the preference set is empty: nothing to train on")
    return Dataset.from_list(
        [{"prompt": format_prompt(tokenizer, p.prompt, template), "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    )


def train_dpo(
    base_model_name: str,
    pairs: list[Preference],
    out_dir: str | Path,
    *,
    template: str = "auto",
    settings: TrainSettings = TrainSettings(),
    retain_texts: list[str] | None = None,
    reference_dir: str | Path | None = None,
    base_key: str | None = None,
    device: str = "auto",
    progress: bool = True,
) -> TrainResult:
    """DPO with (IA)^3 on the MLP; returns where the adapter is. A finished adapter is not retrained.
    The adapter is keyed by `base_key` (default: `base_model_name`), which names the base by what it is where
    its name is a folder path that may move (an SFT'd M1: study.checkpoints.m1_key).
    With `settings.retain_weight > 0`, `retain_texts` (general text) anchor M2 to M1 through a KL term.
    The reference log-probabilities are cached under `reference_dir` (default: inside out_dir) by what
    they depend on, the tokenized pairs and M1's weights: runs given one folder (the training seeds of
    one preference set) compute them once."""
    from trl import DPOConfig

    if not pairs:
        raise ValueError("the preference set is empty: nothing to train on")
    if settings.retain_weight > 0 and not retain_texts:
        raise ValueError("retain_weight > 0 needs retain_texts (general text to keep M2 close to M1 on); none given")
    check_settings(settings)
    retain_texts = list(retain_texts or []) if settings.retain_weight > 0 else []
    out = Path(out_dir)
    key = content_key("dpo", base_key or base_model_name, template, ENCODING, settings_key(settings), [asdict(p) for p in pairs], retain_texts)
    done_by_main(lambda: claim_dir(out, key))  # one process empties a stale folder, not two racing
    if adapter_done(out):
        return _result_from_log(out)
    model, tokenizer, dev = _load_for_training(base_model_name, device)
    dataset = _shared_dataset(dpo_dataset(tokenizer, pairs, template), out)
    losses = {"loss_type": ["sigmoid"]} if settings.sft_weight == 0 else {
        "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, settings.sft_weight]}
    args = DPOConfig(**_trainer_args(out, settings, dev, len(pairs), progress), beta=settings.beta,
                     max_length=settings.max_length, precompute_ref_log_probs=True, **losses)
    retain = retain_batches(tokenizer, retain_texts, settings.retain_batch_size, settings.retain_max_tokens)
    with dense_cpu_logprobs(dev):  # the reference log-probs are computed while the trainer is built
        trainer = _dpo_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                       peft_config=ia3_mlp_config(), retain=retain, retain_weight=settings.retain_weight,
                                       reference_dir=Path(reference_dir or out / "reference"), settings=settings)
        return _train_and_save(trainer, out, base_model_name, settings,
                               {"objective_pairs": len(pairs), "retain_texts": len(retain_texts)})


def retain_batches(tokenizer, texts: list[str], batch_size: int, max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of general text (input_ids, attention_mask), each text cut to max_tokens."""
    from ..lm.generation import encode_texts, pad_token_id, right_pad

    encoded = encode_texts(tokenizer, texts, max_tokens)
    batches = [right_pad(encoded[start:start + batch_size], pad_token_id(tokenizer)) for start in range(0, len(encoded), batch_size)]
    return [{"input_ids": ids, "attention_mask": mask} for ids, mask in batches]


def retain_kl(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over real tokens of KL(M1 || M2) of the next-token distributions; M1 is the PEFT model
    with its adapter disabled (the DPO reference), so no second copy is needed."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.no_grad(), model.disable_adapter():
        ref = torch.log_softmax(model(**batch).logits.float(), dim=-1)
    logp = torch.log_softmax(model(**batch).logits.float(), dim=-1)
    kl = (ref.exp() * (ref - logp)).sum(-1)
    mask = batch["attention_mask"].bool()
    return kl[mask].mean()


def _dpo_trainer_class():
    """trl's DPOTrainer with an optional retain-KL term (built on demand: importing trl is slow)."""
    from trl import DPOTrainer

    class RetainDPOTrainer(DPOTrainer):
        def __init__(self, *args, retain: list[dict], retain_weight: float, reference_dir: Path,
                     settings: TrainSettings = TrainSettings(), **kwargs):
            self.reference_dir = reference_dir  # set first: trl computes the reference log-probs in __init__
            self.settings = settings
            super().__init__(*args, **kwargs)
            self.retain, self.retain_weight = retain, retain_weight

        def create_optimizer(self, model=None):
            if self.settings.optimizer != "sgd":
                return super().create_optimizer(model)
            if self.optimizer is None:
                params = [p for p in (model or self.model).parameters() if p.requires_grad]
                self.optimizer = torch.optim.SGD(params, lr=self.args.learning_rate, momentum=self.settings.momentum)
            return self.optimizer

        def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
            # trl caches these beside the dataset under a fingerprint that differs from one trainer to the
            # next, so two seeds on the same pairs computed them twice; here the key is their content.
            key = content_key(dataset.to_list(), self._precompute_model_hash)
            # The key in the file name (not one keyed file): every set of pairs trained here keeps its values.
            path = self.reference_dir / f"{name}-{key}.json"
            if path.exists():
                saved = read_json(path)
                dataset = dataset.flatten_indices()  # trl's filters leave an index mapping add_column refuses
                return dataset.add_column("ref_chosen_logps", saved["chosen"]).add_column("ref_rejected_logps", saved["rejected"])
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            if self.accelerator.is_main_process:
                write_json_atomic(path, {"chosen": list(out["ref_chosen_logps"]), "rejected": list(out["ref_rejected_logps"])})
            return out

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not self.retain or self.retain_weight == 0 or not model.training:
                return result
            batch = self.retain[self.state.global_step % len(self.retain)]  # by step: a resumed run continues the cycle
            kl = retain_kl(self.accelerator.unwrap_model(model), batch)
            self._metrics["train"]["retain_kl"].append(kl.item())
            if return_outputs:
                return result[0] + self.retain_weight * kl, result[1]
            return result + self.retain_weight * kl

    return RetainDPOTrainer


def sft_dataset(tokenizer, conversations: list[list[dict]], template: str):
    """Prompt-completion examples, one per assistant turn, so the loss falls on assistant tokens only.
    The prompt holds the conversation so far (earlier turns as plain text, the last user turn templated)."""
    from datasets import Dataset

    from ..lm.chat import format_prompt

    rows = []
    for conv in conversations:
        history: list[str] = []
        for turn, reply in zip(conv[0::2], conv[1::2]):
            if turn["role"] != "user" or reply["role"] != "assistant":
                raise ValueError("SFT conversations must alternate user and assistant turns, starting with the user")
            context = "\n\n".join([*history, turn["content"]])
            rows.append({"prompt": format_prompt(tokenizer, context, template), "completion": reply["content"] + tokenizer.eos_token})
            history += [turn["content"], reply["content"]]
    if not rows:
        raise ValueError("the SFT conversation set is empty: nothing to train on")
    return Dataset.from_list(rows)


def train_sft(
    base_model_name: str,
    conversations: list[list[dict]],
    out_dir: str | Path,
    *,
    template: str = "auto",
    settings: TrainSettings = TrainSettings(),
    device: str = "auto",
    progress: bool = True,
) -> TrainResult:
    """SFT with (IA)^3 on the MLP, loss on assistant turns only (trl's completion-only loss)."""
    from trl import SFTConfig, SFTTrainer

    if not conversations:
        raise ValueError("the SFT conversation set is empty: nothing to train on")
    out = Path(out_dir)
    check_settings(settings)
    if settings.optimizer != "adamw":
        raise ValueError(f"SFT trains with adamw; optimizer {settings.optimizer!r} is a DPO setting")
    key = content_key("sft", base_model_name, template, ENCODING, settings_key(settings), conversations)
    done_by_main(lambda: claim_dir(out, key))  # one process empties a stale folder, not two racing
    if adapter_done(out):
        return _result_from_log(out)
    model, tokenizer, dev = _load_for_training(base_model_name, device)
    dataset = _shared_dataset(sft_dataset(tokenizer, conversations, template), out)
    args = SFTConfig(**_trainer_args(out, settings, dev, len(dataset), progress), max_length=settings.max_length,
                     completion_only_loss=True, packing=False)
    with dense_cpu_logprobs(dev):
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=ia3_mlp_config())
        return _train_and_save(trainer, out, base_model_name, settings, {"sft_examples": len(dataset)})


def save_merged_model(base_model_name: str, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold an adapter into its base (into up_proj's rows, as for M2) and save a full checkpoint.
    After SFT this checkpoint is M1: the model DPO starts from and every comparison's baseline."""
    from ..lm.models import fold_ia3, load_hf_model

    final = Path(out_dir)
    if (final / "config.json").exists():
        return final
    model, tokenizer = load_hf_model(base_model_name, dtype=torch.float32)
    fold_ia3(model, adapter_dir)
    staging = final.with_name(f".{final.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    os.replace(staging, final)
    return final


def _step_timer():
    """A callback recording the wall time of each optimiser step (trl's logs carry no timings).
    Built on demand so that importing this module does not import transformers."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, *a, **k):
            self._t = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def _gradient_recorder():
    """A callback summing each (IA)^3 scale's gradient over the optimiser steps (after clipping, as the
    optimiser sees it): what the update would be with plain SGD at a constant rate. The recipe study
    compares it with the update the optimiser made (does the update reflect the gradient?)."""
    from transformers import TrainerCallback

    class GradientRecorder(TrainerCallback):
        def __init__(self):
            self.sums: dict[str, torch.Tensor] = {}
            self.steps = 0

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if model is None:
                return
            for name, param in model.named_parameters():
                if "ia3_l" in name and param.grad is not None:
                    grad = param.grad.detach().float().cpu()
                    self.sums[name] = self.sums[name] + grad if name in self.sums else grad.clone()
            self.steps += 1

    return GradientRecorder()


def _load_for_training(base_model_name: str, device: str):
    from ..lm.models import load_hf_model, resolve_device

    dev = resolve_device(device)
    model, tokenizer = load_hf_model(base_model_name, dtype=torch.float32, attn_implementation="sdpa")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(dev), tokenizer, dev


def _trainer_args(out: Path, settings: TrainSettings, dev: torch.device, n_examples: int, progress: bool) -> dict[str, Any]:
    return dict(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        adam_epsilon=settings.adam_epsilon,
        num_train_epochs=settings.epochs,
        lr_scheduler_type="linear",
        warmup_steps=int(settings.warmup_ratio * total_steps(n_examples, settings)),
        bf16=use_bf16(dev),
        fp16=False,
        gradient_checkpointing=False,  # small models: recomputation costs more than it saves
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,
        report_to=[],
        seed=settings.seed,
        data_seed=settings.seed,
        use_cpu=dev.type == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )


def _shared_dataset(dataset, out: Path):
    """Under a distributed launch, the training set as a folder every process opens: trl tokenizes it on
    the main process first and the others reuse the cache files beside it (an in-memory dataset's cache
    lives in one process's temporary folder, which the others cannot open). One process: unchanged."""
    if not is_sharded():
        return dataset
    from datasets import load_from_disk

    folder = out / "dataset"

    def save() -> None:
        shutil.rmtree(folder, ignore_errors=True)
        dataset.save_to_disk(str(folder))

    done_by_main(save)
    return load_from_disk(str(folder))


def _train_and_save(trainer, out: Path, base_model_name: str, settings: TrainSettings, extra: dict[str, Any]) -> TrainResult:
    """Train (resuming from the last checkpoint if one exists), then write the adapter atomically.
    Under accelerate launch / torchrun every process trains (trl and accelerate split the batches and
    reduce the gradients: DDP, or DeepSpeed with its config) and the main process alone writes."""
    ckpt_dir = out / "checkpoints"
    resume = _last_checkpoint(ckpt_dir)
    timer, gradients = _step_timer(), _gradient_recorder()
    trainer.add_callback(timer)
    trainer.add_callback(gradients)
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start
    if trainer.accelerator.is_main_process:
        extra = extra | {"gradient_steps": gradients.steps}  # fewer than `steps` after a resume
        _write_adapter(trainer, out, base_model_name, settings, extra, seconds, timer.times, resumed=resume is not None,
                       gradient_sums=gradients.sums)
    trainer.accelerator.wait_for_everyone()
    return _result_from_log(out)


def _write_adapter(trainer, out: Path, base_model_name: str, settings: TrainSettings, extra: dict[str, Any],
                   seconds: float, step_times: list[float], *, resumed: bool,
                   gradient_sums: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import save_file

    from ..lm.models import write_base_fingerprint

    ckpt_dir = out / "checkpoints"
    staging = out / f".{ADAPTER_DIRNAME}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    trainer.model.save_pretrained(staging)
    # (IA)^3 leaves the base weights untouched, so the trained model's base is the base to record.
    write_base_fingerprint(staging, trainer.model.get_base_model(), base_model_name)
    if gradient_sums:
        save_file({name: t.contiguous() for name, t in gradient_sums.items()}, str(staging / GRADIENT_SUM))
    log = [dict(entry) for entry in trainer.state.log_history]
    step_seconds = sum(step_times) / max(len(step_times), 1)
    write_json_atomic(staging / TRAIN_LOG, {
        **extra, "settings": asdict(settings), "base": base_model_name, "seconds": seconds,
        "steps": trainer.state.global_step, "step_seconds": step_seconds, "resumed": resumed,
        "device": str(trainer.args.device), "processes": trainer.accelerator.num_processes,
        "bf16": trainer.args.bf16, "log": log,
    })
    final = out / ADAPTER_DIRNAME
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    shutil.rmtree(out / "dataset", ignore_errors=True)  # a distributed run's shared copy of the training set


def total_steps(n_pairs: int, settings: TrainSettings) -> int:
    per_epoch = -(-n_pairs // (settings.batch_size * settings.grad_accum))
    return max(1, int(per_epoch * settings.epochs))


def _last_checkpoint(ckpt_dir: Path) -> Path | None:
    if not ckpt_dir.is_dir():
        return None
    ckpts = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return ckpts[-1] if ckpts else None


def _result_from_log(out: Path) -> TrainResult:
    data = read_json(out / ADAPTER_DIRNAME / TRAIN_LOG)
    return TrainResult(out / ADAPTER_DIRNAME, data["seconds"], data["steps"], data["step_seconds"], data["log"], data["resumed"])


def training_curve(log: list[dict[str, Any]]):
    """Loss and reward margin per step, from trl's log history."""
    import pandas as pd

    rows = [
        {"step": e["step"], "loss": e.get("loss"), "reward_margin": e.get("rewards/margins"), "reward_accuracy": e.get("rewards/accuracies")}
        for e in log if "loss" in e and "step" in e
    ]
    return pd.DataFrame(rows)
