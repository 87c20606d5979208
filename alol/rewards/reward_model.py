"""OpenAssistant-style reward models: a GPT-NeoX backbone and a linear score head on the last token.

The OASST checkpoints (e.g. OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5) ship a custom
class that needs trust_remote_code. Their weights are plain: `gpt_neox.*` for the backbone
and `out_proj.{weight,bias}` for the head. This module builds the backbone from transformers'
own GPTNeoXModel and a Linear head, and loads those tensors: no remote code runs. The HF
standard layout (GPTNeoXForSequenceClassification: `score.weight`) loads too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from alol.core.device import place
from alol.core.errors import AlolError


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
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), pad)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for row, x in enumerate(ids):  # right padding: the last real token is at len - 1
                input_ids[row, :len(x)] = torch.tensor(x)
                mask[row, :len(x)] = 1
            device = self.head.weight.device
            input_ids, mask = input_ids.to(device), mask.to(device)
            hidden = self.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
            last = hidden[torch.arange(len(ids)), mask.sum(1) - 1]
            out[idx] = self.head(last).squeeze(-1).float().cpu().numpy()
        return out
