"""`toxichat`: P(safe) of the ToxiChat offensive classifier (a DialoGPT body and a 2-way head) on
the thread prompt + reply + EOS, in [0, 1]."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from alol.core.device import place, reward_dtype
from alol.core.errors import AlolError
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType, load_tokenizer
from alol.models.padding import pad_right


@dataclasses.dataclass
class ToxiChatConfig(RewardConfig):
    model: str | None = None
    """A local folder with the ToxiChat classifier's state dict, GPT-2 config.json and tokenizer."""
    head: str | None = None
    """State-dict prefix of the 2-way head (null: the only (2, hidden) weight outside the GPT-2 body)."""
    max_tokens: int = 1024
    """Inputs are left-truncated to this many tokens."""
    batch_size: int = 16
    """Threads per forward pass."""
    dtype: str = "auto"
    """float32, bfloat16 or float16; auto: bf16 on a GPU, float32 on the CPU (alol/core/device.py)."""


def state_dict_of(folder: Path, where: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (or one file): safetensors, or .bin/.pt read with
    torch.load(weights_only=True), which refuses anything but tensors and plain containers."""
    from safetensors.torch import load_file

    files = [folder] if folder.is_file() else (sorted(folder.glob("*.safetensors")) or
                                               sorted([*folder.glob("*.bin"), *folder.glob("*.pt")]))
    if not files:
        raise AlolError(f"{where}.model: {folder} holds no *.safetensors, *.bin or *.pt weights.")
    state = {}
    for f in files:
        if f.suffix == ".safetensors":
            state.update(load_file(f))
        else:
            try:
                loaded = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001  (a pickled model object, not a state dict)
                raise AlolError(f"{where}.model: {f} is not a plain state dict ({str(err)[:200]}); save "
                                "model.state_dict() (or safetensors) instead of a pickled model.") from None
            loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
            if not isinstance(loaded, dict):
                raise AlolError(f"{where}.model: {f} does not hold a state dict of tensors.")
            state.update(loaded)
    return state


class ToxiChat(Component):
    """P(safe) from the ToxiChat offensive classifier (Baheti et al. 2021, the authors' Reddit `safe`
    reward): a DialoGPT (GPT-2) body and a linear 2-way head on the last hidden state of each EOS
    token; the thread `prompt + reply + EOS` (`parent<|endoftext|>reply<|endoftext|>`) is read at its
    LAST EOS, class 0 = safe, softmax. The checkpoint is a plain state dict (safetensors, or a .bin/.pt
    loaded with weights_only=True: no pickled code): the GPT-2 body under `transformer.` (or unprefixed)
    and the head under `head` (null: the only (2, hidden) weight outside the body). `model` is a folder
    with the checkpoint, GPT-2's config.json and the tokenizer."""

    def __init__(self, model: str | None, head: str | None, where: str, max_tokens: int = 1024,
                 batch_size: int = 16, dtype: str = "auto"):
        import json

        from transformers import GPT2Config, GPT2Model

        folder = Path(model or "")
        if not model or not folder.exists():
            raise AlolError(f"{where}.model: toxichat needs a local folder with the classifier's weights, config.json "
                            f"and tokenizer (got {model!r}); it is not on the hub.")
        config_dir = folder if folder.is_dir() else folder.parent
        if not (config_dir / "config.json").exists():
            raise AlolError(f"{where}.model: {config_dir} has no config.json (DialoGPT-medium's GPT-2 config).")
        config = GPT2Config(**{k: v for k, v in json.loads((config_dir / "config.json").read_text()).items()
                               if k not in ("architectures", "model_type", "transformers_version")})
        state = state_dict_of(folder, where)
        prefix = "transformer." if any(k.startswith("transformer.") for k in state) else ""
        body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith("lm_head.")}
        if head is None:
            heads = sorted(k[:-len(".weight")] for k, v in state.items() if k.endswith(".weight") and
                           not k.startswith(("transformer.", "lm_head.")) and tuple(v.shape) == (2, config.n_embd))
            if len(heads) != 1:
                raise AlolError(f"{where}: found {len(heads)} candidate 2-way heads {heads} in {model}; set `head:` "
                                "to the state-dict prefix of the classifier head.")
            head = heads[0]
        if f"{head}.weight" not in state:
            raise AlolError(f"{where}.head: {model} has no {head}.weight.")
        body = {k: v for k, v in body.items() if not k.startswith(head + ".")}
        self.body = GPT2Model(config)
        missing, unexpected = self.body.load_state_dict(body, strict=False)
        missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        unexpected = [k for k in unexpected if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        if missing or unexpected:
            raise AlolError(f"{where}.model: the GPT-2 body of {model} does not match its config.json: missing "
                            f"{missing[:4]}, unexpected {unexpected[:4]}.")
        self.head = torch.nn.Linear(config.n_embd, 2, bias=f"{head}.bias" in state)
        self.head.load_state_dict({k[len(head) + 1:]: v for k, v in state.items() if k.startswith(head + ".")})
        self.tokenizer = load_tokenizer(str(config_dir), where)
        dt = reward_dtype(dtype)
        self.body = place(self.body.eval().requires_grad_(False), f"ToxiChat body {model}", dt)
        self.head = place(self.head.eval().requires_grad_(False), f"ToxiChat head {model}", dt)
        self.max_tokens, self.batch_size = max_tokens, batch_size

    @torch.inference_mode()
    def probabilities(self, rows: RewardInputs) -> np.ndarray:
        """(rows, 2) softmax at the last EOS of each thread."""
        eos = self.tokenizer.eos_token
        texts = [p + c + eos for p, c in zip(rows.prompts, rows.completions)]
        out = np.zeros((len(texts), 2))
        device = self.head.weight.device
        for start in range(0, len(texts), self.batch_size):
            ids = [x[-self.max_tokens:] for x in
                   self.tokenizer(texts[start:start + self.batch_size], add_special_tokens=False)["input_ids"]]
            input_ids, mask = pad_right(ids, self.tokenizer.eos_token_id)
            hidden = self.body(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            last_eos = torch.tensor([max(i for i, t in enumerate(x) if t == self.tokenizer.eos_token_id) for x in ids])
            picked = hidden[torch.arange(len(ids), device=device), last_eos.to(device)]
            out[start:start + len(ids)] = self.head(picked).float().softmax(-1).cpu().numpy()
        return out

    def score(self, rows: RewardInputs) -> np.ndarray:
        return self.probabilities(rows)[:, 0]


REWARD_TYPE = RewardType(
    name="toxichat", config=ToxiChatConfig, bounds=(0.0, 1.0), needs=lambda cfg: ("prompt", "completion"),
    build=lambda cfg, assets, where: ToxiChat(cfg.model, cfg.head, where, cfg.max_tokens, cfg.batch_size, cfg.dtype))
