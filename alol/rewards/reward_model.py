"""`reward_model`: sigmoid(logit) of an OpenAssistant-style reward model on the dialogue (HH), in [0, 1].

The reward models: a GPT-NeoX backbone and a linear score head on the last token.

The OASST checkpoints (e.g. OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5) ship a custom
class that needs trust_remote_code. Their weights are plain: `gpt_neox.*` for the backbone
and `out_proj.{weight,bias}` for the head. This module builds the backbone from transformers'
own GPTNeoXModel and a Linear head, and loads those tensors: no remote code runs. The HF
standard layout (GPTNeoXForSequenceClassification: `score.weight`) loads too.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from alol.models.padding import pad_right

from alol.core.device import place, reward_dtype
from alol.core.errors import AlolError
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType


@dataclasses.dataclass
class RewardModelConfig(RewardConfig):
    model: str | None = None
    """Hub id or folder of a GPT-NeoX reward model (OASST layout, no remote code)."""
    test_model: str | None = None
    """Another reward model for the test split (null: `model`)."""
    max_tokens: int = 1024
    """Inputs are left-truncated to this many tokens."""
    use_stored_logits: bool = True
    """Use the logits stored with the train split's data replies (PRO's train file, scored by the
    train/validation model) instead of rescoring them; validation and test are always rescored."""
    batch_size: int = 8
    """Dialogues per forward pass (sorted by length)."""
    dtype: str = "auto"
    """float32, bfloat16 or float16; auto: bf16 on a GPU, float32 on the CPU (alol/core/device.py)."""


def _local_folder(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]))
    except Exception as err:  # noqa: BLE001  (offline, unknown id, ...: one clear message)
        raise AlolError(f"reward model {source!r}: not a local folder and not downloadable ({err}).") from None


def _state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        state = {}
        for f in files:
            state.update(load_file(f))
        return state
    files = sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise AlolError(f"{folder}: no *.safetensors or pytorch_model*.bin weights.")
    state = {}
    for f in files:  # weights_only: tensors only, never arbitrary pickled objects
        state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


class RewardModel(torch.nn.Module):
    """score(texts) -> one logit per text, from the hidden state of the last real token."""

    def __init__(self, source: str, max_tokens: int = 1024, dtype: torch.dtype = torch.float32):
        super().__init__()
        from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXModel

        folder = _local_folder(source)
        config = json.loads((folder / "config.json").read_text())
        if config.get("model_type") != "gpt_neox":
            raise AlolError(f"{source}: model_type {config.get('model_type')!r}; the reward_model type reads "
                            "GPT-NeoX reward models (OASST). Use type: hf_classifier for other classifiers.")
        self.backbone = GPTNeoXModel(GPTNeoXConfig.from_pretrained(folder))
        state = _state_dict(folder)
        head_key = "out_proj" if "out_proj.weight" in state else "score"
        if f"{head_key}.weight" not in state:
            raise AlolError(f"{source}: no score head (expected out_proj.weight or score.weight).")
        self.head = torch.nn.Linear(self.backbone.config.hidden_size, 1, bias=f"{head_key}.bias" in state)
        backbone = {k[len("gpt_neox."):]: v for k, v in state.items() if k.startswith("gpt_neox.")}
        missing, unexpected = self.backbone.load_state_dict(backbone, strict=False)
        missing = [k for k in missing if "rotary_emb" not in k and not k.endswith("masked_bias") and "bias" != k]
        if missing:
            raise AlolError(f"{source}: backbone weights missing: {missing[:5]}")
        self.head.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(head_key + ".")})
        place(self.eval().requires_grad_(False), f"reward model {source}", dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.truncation_side = "left"  # keep the end: the reply being scored
        self.max_tokens = max_tokens

    @property
    def eos(self) -> str:
        return self.tokenizer.eos_token

    @torch.inference_mode()
    def score(self, texts: list[str], batch_size: int = 8) -> np.ndarray:
        out = np.zeros(len(texts))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids = [self.tokenizer(texts[i], add_special_tokens=False)["input_ids"][-self.max_tokens:] for i in idx]
            input_ids, mask = pad_right(ids, pad)  # right padding: the last real token is at len - 1
            device = self.head.weight.device
            input_ids, mask = input_ids.to(device), mask.to(device)
            hidden = self.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
            last = hidden[torch.arange(len(ids)), mask.sum(1) - 1]
            out[idx] = self.head(last).squeeze(-1).float().cpu().numpy()
        return out


class DialogueRewardModel(Component):
    """sigmoid of a GPT-NeoX reward model's logit on (turns + reply), a separate model for test
    if given (the paper: pythia-1.4B for train/validation, 6.9B for test). With `use_stored_logits`
    the train split's stored logits are used where present (PRO's train file carries the 1.4B's):
    only there, since validation and test must be scored by their own model (test: the 6.9B, so
    that the gold replies and the policies' replies are scored alike)."""

    def __init__(self, model: str, test_model: str | None, max_tokens: int, use_stored_logits: bool, where: str,
                 batch_size: int = 8, dtype: str = "auto"):
        if not model:
            raise AlolError(f"{where}.model: reward_model needs a model (hub id or folder).")
        self.sources = {"default": model, "test": test_model or model}
        self.max_tokens, self.use_stored, self.where, self.batch_size = max_tokens, use_stored_logits, where, batch_size
        self.dtype = reward_dtype(dtype)
        self.models: dict = {}

    def _model(self, split: str | None):
        source = self.sources["test" if split == "test" else "default"]
        if source not in self.models:
            self.models[source] = RewardModel(source, self.max_tokens, self.dtype)
        return self.models[source]

    def score(self, rows: RewardInputs) -> np.ndarray:
        return self.raw_and_score(rows)[1]

    def raw_and_score(self, rows: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        logits = self.logits(rows)
        return logits, 1.0 / (1.0 + np.exp(-logits))

    def logits(self, rows: RewardInputs) -> np.ndarray:
        stored = rows.stored_logits
        if self.use_stored and rows.split == "train" and stored is not None and np.all(np.isfinite(stored)):
            logits = np.asarray(stored, dtype=np.float64)
        else:
            turns = rows.get("turns")
            if turns is None:
                raise AlolError(f"{self.where}: reward_model scores dialogues; these rows have no `turns` column.")
            from alol.tasks.hh import reward_model_text

            model = self._model(rows.split)
            logits = model.score([reward_model_text(t, c, model.eos) for t, c in zip(turns, rows.completions)],
                                 self.batch_size)
        return np.asarray(logits, dtype=np.float64)


REWARD_TYPE = RewardType(
    name="reward_model", config=RewardModelConfig, bounds=(0.0, 1.0), needs=lambda cfg: ("turns", "completion"),
    build=lambda cfg, assets, where: DialogueRewardModel(cfg.model, cfg.test_model, cfg.max_tokens,
                                                         cfg.use_stored_logits, where, cfg.batch_size, cfg.dtype))
