"""Loading and saving the policy: full fine-tuning, LoRA, or QLoRA (4-bit NF4 + LoRA)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import torch

from alol.core.device import DTYPES, load_kwargs, place
from alol.core.errors import AlolError


@dataclasses.dataclass
class ModelConfig:
    """`model:` which weights are trained, and how."""

    mode: Literal["full", "lora", "qlora"] = "lora"
    """full: every weight; lora: low-rank adapters on a frozen base; qlora: lora on a 4-bit NF4 base."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype. float32 on CPU (bf16 is ~27x slower on CPUs without AMX); bf16 on GPUs."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input. 0 keeps training deterministic and resumable bit for bit."""
    lora_target_modules: str = "all-linear"
    """peft target_modules: 'all-linear' or a comma-separated list of module names."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code. Off: it runs arbitrary code."""


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    base, adapter = policy_paths(path)
    has_own = adapter is None or any((adapter / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(path if has_own else base)  # an adapter may ship without one
    if tokenizer.eos_token_id is None:
        raise AlolError(f"{path}: the tokenizer has no EOS token; completions must end with one.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # labels come from lengths, never from the pad id
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary and special tokens: detects a policy/data tokenizer mismatch."""
    import hashlib

    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([vocab, tokenizer.eos_token, tokenizer.bos_token]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_policy(path: str | Path, cfg: ModelConfig, adapter: str | Path | None = None, trainable: bool = True):
    """The model at `path` (plus an existing LoRA adapter) prepared for `cfg.mode`."""
    from transformers import AutoModelForCausalLM

    kwargs = {**load_kwargs(DTYPES[cfg.dtype]), "trust_remote_code": cfg.trust_remote_code}
    if cfg.mode == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
            bnb_4bit_compute_dtype=DTYPES[cfg.dtype], bnb_4bit_quant_storage=DTYPES[cfg.dtype])
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise AlolError(f"could not load a causal LM from {path}: {err}") from None
    model.config.use_cache = not trainable  # the KV cache only helps generation
    if cfg.mode == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    elif cfg.mode in ("lora", "qlora") and trainable:
        from peft import LoraConfig, get_peft_model

        targets = cfg.lora_target_modules
        model = get_peft_model(model, LoraConfig(
            r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]))
    if not trainable:
        model.eval().requires_grad_(False)
    return place(model, "policy" if trainable else "frozen policy")


def save_policy(model, tokenizer, out: Path, card: str | None = None) -> None:
    """save_pretrained: a full model, or just the adapter for lora/qlora (safetensors); `card`: its README.md
    (instead of the template peft writes)."""
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if card is not None:
        (Path(out) / "README.md").write_text(card)
    config = Path(out) / "adapter_config.json"
    if config.exists():  # peft writes target_modules from a set: sort it so equal weights give equal files
        data = json.loads(config.read_text())
        if isinstance(data.get("target_modules"), list):
            data["target_modules"] = sorted(data["target_modules"])
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def policy_paths(path: str | Path) -> tuple[Path, Path | None]:
    """(base model, adapter or None) for a saved policy folder."""
    path = Path(path)
    if not path.exists():  # a hub id: an adapter repository is fetched (small), a model id stays an id
        path = hub_adapter(str(path)) or path
    config = path / "adapter_config.json"
    if config.exists():
        base = json.loads(config.read_text()).get("base_model_name_or_path")
        if not base:
            raise AlolError(f"{config}: base_model_name_or_path is empty; set it to the base model's hub id or folder.")
        return resolve_base(Path(base), path), path
    return path, None


def resolve_base(base: Path, adapter: Path) -> Path:
    """An adapter's base as recorded (a hub id, or a folder relative to the repository it was trained
    in, like data/assets/policy): found from the current folder, else from the adapter's enclosing
    folders, so that models/policy loads from anywhere, not only from the repository root."""
    if base.is_absolute() or base.exists():
        return base
    for folder in adapter.resolve().parents:
        if (folder / base).is_dir():
            return folder / base
    return base  # a hub id


def hub_adapter(source: str) -> Path | None:
    """The local snapshot of a hub repository if it is a peft adapter (small), else None."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(source, allow_patterns=["adapter_config.json"]))
    except Exception:  # noqa: BLE001  (not on the hub, offline: treat as a model id)
        return None
    if not (folder / "adapter_config.json").exists():
        return None
    return Path(snapshot_download(source, allow_patterns=["adapter_*", "*.json", "*.model", "tokenizer*"]))
