"""Training a policy from a table: shared by train_reference and finetune."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from alol.models.load import ModelConfig, load_policy, policy_paths
from alol.models.logprobs import encode
from alol.training.loop import TrainConfig


@dataclasses.dataclass
class ReferenceConfig:
    """`train_reference:` how the reference policy pi_ref is obtained."""

    source: str = "train"
    """'train': NLL on the train completions, starting from the downloaded policy. Anything else is
    a model folder, hub id or saved adapter folder used as the reference as is (HH: an SFT adapter)."""
    steps: int = 12
    """Optimizer steps of NLL training (uniform passes over the train rows)."""
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(learning_rate=3.0e-4, batch_size=8, micro_batch_size=4))
    """Optimiser, schedule and batching of NLL training."""


def load_trainable(folder: str | Path, cfg: ModelConfig):
    """A saved policy folder (full model, or adapter on its base) ready to train further."""
    base, adapter = policy_paths(folder)
    return load_policy(base, cfg, adapter=adapter, trainable=True)


def load_frozen(folder: str | Path, cfg: ModelConfig):
    """A saved policy for inference only; a LoRA adapter is merged into its base (faster forward)."""
    base, adapter = policy_paths(folder)
    frozen = dataclasses.replace(cfg, mode="full" if cfg.mode == "lora" else cfg.mode)
    model = load_policy(base, frozen, adapter=adapter, trainable=False)
    if adapter is not None and frozen.mode != "qlora":  # merging into 4-bit weights would re-quantise
        model = model.merge_and_unload()
    return model


def table_examples(frame: pl.DataFrame, tokenizer, max_prompt_tokens: int, max_completion_tokens: int):
    return encode(tokenizer, frame["prompt"].to_list(), frame["completion"].to_list(), max_prompt_tokens,
                  max_completion_tokens)
