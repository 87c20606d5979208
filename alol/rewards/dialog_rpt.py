"""`dialog_rpt`: sigmoid of a DialogRPT ranker's one logit on the dialogue and the reply, in [0, 1]."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from alol.core.device import load_kwargs, place, reward_dtype
from alol.core.errors import AlolError
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType, load_tokenizer
from alol.models.padding import pad_right


@dataclasses.dataclass
class DialogRPTConfig(RewardConfig):
    model: str | None = None
    """Hub id or folder of a DialogRPT ranker (e.g. microsoft/DialogRPT-updown)."""
    max_tokens: int = 1024
    """Inputs are left-truncated to this many tokens."""
    batch_size: int = 16
    """Rows per forward pass."""
    dtype: str = "auto"
    """float32, bfloat16 or float16; auto: bf16 on a GPU, float32 on the CPU (alol/core/device.py)."""


class DialogRPT(Component):
    """sigmoid of a DialogRPT ranker's logit (microsoft/DialogRPT-depth, -updown: GPT-2
    `GPT2ForSequenceClassification` with one label) on the context and the reply as the authors score
    them: `turn<eos>...turn<eos>reply` when the rows have a dialogue history (WoW: the turns after the
    knowledge), else `prompt + reply` (Reddit: the prompt is `parent<|endoftext|>`). The logit is read
    at the last real token of each right-padded row (never found through the pad id, which is EOS
    for GPT-2 and also separates context from reply); inputs are left-truncated to `max_tokens`."""

    def __init__(self, model: str | None, where: str, max_tokens: int = 1024, batch_size: int = 16,
                 dtype: str = "auto"):
        from transformers import GPT2ForSequenceClassification

        if not model:
            raise AlolError(f"{where}.model: dialog_rpt needs a model (e.g. microsoft/DialogRPT-updown).")
        self.tokenizer = load_tokenizer(model, where)
        try:
            self.model = GPT2ForSequenceClassification.from_pretrained(model, **load_kwargs(reward_dtype(dtype)))
        except (OSError, ValueError) as err:
            raise AlolError(f"{where}.model: could not load {model!r} as a GPT-2 sequence classifier: {err}") from None
        if self.model.config.num_labels != 1:
            raise AlolError(f"{where}.model: {model} has {self.model.config.num_labels} labels; DialogRPT has one "
                            "logit (use hf_classifier for a multi-class model).")
        self.model = place(self.model.eval().requires_grad_(False), f"DialogRPT {model}")
        self.max_tokens, self.batch_size = max_tokens, batch_size

    @torch.inference_mode()
    def logits(self, rows: RewardInputs) -> np.ndarray:
        eos, history = self.tokenizer.eos_token, rows.get("turns")
        if history is not None:  # a dialogue history (WoW): turn<eos>...turn<eos>reply, the knowledge left out
            texts = ["".join(t + eos for t in turns) + c for turns, c in zip(history, rows.completions)]
        else:  # the prompt is the context as the ranker reads it (Reddit: parent<eos>)
            texts = [p + c for p, c in zip(rows.prompts, rows.completions)]
        out = np.zeros(len(texts))
        for start in range(0, len(texts), self.batch_size):
            ids = [x[-self.max_tokens:] for x in
                   self.tokenizer(texts[start:start + self.batch_size], add_special_tokens=False)["input_ids"]]
            input_ids, mask = pad_right(ids, self.tokenizer.eos_token_id)
            device = self.model.score.weight.device
            hidden = self.model.transformer(input_ids=input_ids.to(device),
                                            attention_mask=mask.to(device)).last_hidden_state
            last = hidden[torch.arange(len(ids), device=device), mask.sum(1).to(device) - 1]
            out[start:start + len(ids)] = self.model.score(last)[:, 0].float().cpu().numpy()
        return out

    def score(self, rows: RewardInputs) -> np.ndarray:
        return self.raw_and_score(rows)[1]

    def raw_and_score(self, rows: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        logits = self.logits(rows)
        return logits, 1.0 / (1.0 + np.exp(-logits))


REWARD_TYPE = RewardType(
    name="dialog_rpt", config=DialogRPTConfig, bounds=(0.0, 1.0), needs=lambda cfg: ("prompt", "completion"),
    optional=("turns",),
    build=lambda cfg, assets, where: DialogRPT(cfg.model, where, cfg.max_tokens, cfg.batch_size, cfg.dtype))
