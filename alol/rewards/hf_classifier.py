"""`hf_classifier`: P(label) of any AutoModelForSequenceClassification (hub id or folder) on the
reply, or on a (context | prompt | knowledge, reply) pair, in [0, 1]."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from alol.core.device import load_kwargs, place, reward_dtype
from alol.core.errors import AlolError
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType

TEXT_PAIRS = (None, "context", "prompt", "knowledge")


@dataclasses.dataclass
class HFClassifierConfig(RewardConfig):
    model: str | None = None
    """Hub id or folder of an AutoModelForSequenceClassification."""
    label: str | int | None = None
    """The label whose probability is the reward (name or index); a one-logit model: sigmoid(logit)."""
    text_pair: str | None = None
    """null (completion alone), 'context', 'prompt' or 'knowledge' (the wow task's passage:
    FaithCritic's (knowledge, reply) pair) as the first text of a pair."""
    trust_remote_code: bool = False
    """Allow the model's own Python code. Off by default: it runs arbitrary code."""
    batch_size: int = 64
    """Rows per forward pass."""
    dtype: str = "auto"
    """float32, bfloat16 or float16; auto: bf16 on a GPU, float32 on the CPU (alol/core/device.py)."""


class HFClassifier(Component):
    """P(label) of a sequence classifier on the completion (optionally paired with context or prompt)."""

    def __init__(self, model: str, label: str | int | None, text_pair: str | None, where: str,
                 batch_size: int = 32, max_length: int = 512, trust_remote_code: bool = False, dtype: str = "auto"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if text_pair not in TEXT_PAIRS:
            raise AlolError(f"{where}.text_pair: {text_pair!r} must be null, 'context', 'prompt' or 'knowledge'.")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            self.model, info = AutoModelForSequenceClassification.from_pretrained(
                model, trust_remote_code=trust_remote_code, output_loading_info=True,
                **load_kwargs(reward_dtype(dtype)))
        except (OSError, ValueError) as err:
            raise AlolError(f"{where}.model: could not load {model!r} as a sequence classifier: {err}") from None
        if info["missing_keys"]:  # e.g. a base model with no classifier head: transformers made one up
            from alol.core.stage import console

            console.print(f"[bold yellow]warning[/] {where}.model: {model} has no weights for "
                          f"{sorted(info['missing_keys'])[:4]}: they were newly initialised at random, so this "
                          "reward is random. Use a fine-tuned sequence classifier.", highlight=False)
        self.model.eval()
        self.model = place(self.model, f"classifier {model}")
        labels = self.model.config.id2label
        if self.model.config.num_labels == 1:
            self.label = None  # one logit: P = sigmoid(logit)
        elif isinstance(label, int) and label in labels:
            self.label = label
        elif isinstance(label, str) and label in self.model.config.label2id:
            self.label = self.model.config.label2id[label]
        else:
            raise AlolError(f"{where}.label: {label!r} is not a label of {model}; its labels are {dict(labels)}.")
        self.text_pair, self.batch_size, self.max_length = text_pair, batch_size, max_length

    @torch.inference_mode()
    def score(self, rows: RewardInputs) -> np.ndarray:
        pairs = {"context": lambda: rows.contexts, "prompt": lambda: rows.prompts,
                 "knowledge": lambda: rows.get("knowledge"), None: lambda: None}[self.text_pair]()
        if self.text_pair == "knowledge" and pairs is None:
            raise AlolError("an hf_classifier with text_pair: knowledge needs a `knowledge` column (the wow task).")
        out = []
        for i in range(0, len(rows), self.batch_size):
            texts = [rows.completions[i:i + self.batch_size]]
            if pairs is not None:  # (context, completion): the classifier judges the reply given what it answers
                texts.insert(0, pairs[i:i + self.batch_size])
            enc = self.tokenizer(*texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.model.device)
            logits = self.model(**enc).logits.float()
            probs = torch.sigmoid(logits[:, 0]) if self.label is None else logits.softmax(-1)[:, self.label]
            out.append(probs.cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)


def build(cfg: HFClassifierConfig, assets, where: str) -> HFClassifier:
    if not cfg.model:
        raise AlolError(f"{where}.model: hf_classifier needs a model (hub id or folder).")
    return HFClassifier(cfg.model, cfg.label, cfg.text_pair, where, cfg.batch_size,
                        trust_remote_code=cfg.trust_remote_code, dtype=cfg.dtype)


REWARD_TYPE = RewardType(
    name="hf_classifier", config=HFClassifierConfig, bounds=(0.0, 1.0), build=build,
    needs=lambda cfg: ("completion",) if cfg.text_pair is None else (cfg.text_pair, "completion"))
