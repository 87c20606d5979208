"""The value of the reference policy at a prompt, V(x) (spec section 3).

A frozen reference reads the prompt; one learned query attends over its last-layer states
(8 heads, padding masked); dropout 0.1 before and after; Linear(d, 1); sigmoid scaled to the
task's reward range. Fit by MSE to the reward of the reference's own greedy reply on validation
prompts; the epoch is chosen on a held-out part of them (the reference picks by training MSE).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alol.device import place

from alol.generate import GenerationConfig


@dataclasses.dataclass
class ValueConfig:
    """`estimate_value:` generation on validation prompts and the value-head fit."""

    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    """How the reference's replies to validation prompts are generated (greedy by default)."""
    epochs: int = 30
    """Passes over the value-head training part."""
    learning_rate: float = 1.0e-4
    """AdamW learning rate of the value head (the reference: 1e-5 with a 7B model, 10 epochs)."""
    batch_size: int = 16
    """Value-head batch size."""
    heldout_fraction: float = 0.2
    """Share of validation generations held out to choose the epoch and report fit quality."""
    heads: int = 8
    """Attention heads of the pooling."""
    dropout: float = 0.1
    """Dropout before and after the pooling (train mode only)."""
    reward_range: list[float] | None = None
    """[low, high] the value is squashed into; null infers it from the reward weights (each built-in in [0, 1])."""


class ValueHead(nn.Module):
    def __init__(self, hidden_size: int, low: float, high: float, heads: int = 8, dropout: float = 0.1):
        super().__init__()
        # the frozen LM's last-layer states are far from unit scale (SmolLM2: std 2, peaks of 50):
        # normalise them so that the head's fit does not start saturated
        self.norm = nn.LayerNorm(hidden_size)
        self.query = nn.Parameter(torch.randn(1, 1, hidden_size) * hidden_size ** -0.5)
        self.attention = nn.MultiheadAttention(hidden_size, heads, batch_first=True)
        self.dropout_in, self.dropout_out = nn.Dropout(dropout), nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1)
        self.register_buffer("low", torch.tensor(float(low)))
        self.register_buffer("high", torch.tensor(float(high)))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, L, d) of prompt tokens, mask (B, L) 1 on real tokens -> V (B,)."""
        x = self.dropout_in(self.norm(states))
        pooled, _ = self.attention(self.query.expand(len(x), -1, -1), x, x, key_padding_mask=mask == 0,
                                   need_weights=False)
        score = self.out(self.dropout_out(pooled[:, 0])).squeeze(-1)
        return self.low + (self.high - self.low) * torch.sigmoid(score)

    def save(self, folder: Path, meta: dict) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "value_head.safetensors")
        config = {"hidden_size": self.query.shape[-1], "low": float(self.low), "high": float(self.high),
                  "heads": self.attention.num_heads, "dropout": self.dropout_in.p, **meta}
        (folder / "config.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, folder: Path) -> tuple["ValueHead", dict]:
        from safetensors.torch import load_file

        config = json.loads((folder / "config.json").read_text())
        head = cls(config["hidden_size"], config["low"], config["high"], config["heads"], config["dropout"])
        head.load_state_dict(load_file(folder / "value_head.safetensors"))
        return place(head.eval(), "value head"), config


def pad_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of (L_i, d) prompt states to (B, L, d) with a mask."""
    width = max(len(s) for s in states)
    out = torch.zeros(len(states), width, states[0].shape[-1])
    mask = torch.zeros(len(states), width, dtype=torch.long)
    for i, s in enumerate(states):
        out[i, :len(s)], mask[i, :len(s)] = s, 1
    return out, mask


@torch.inference_mode()
def predict(head: ValueHead, states: list[torch.Tensor], batch_size: int = 64) -> np.ndarray:
    head.eval()
    device = head.low.device
    return np.concatenate([head(*(t.to(device) for t in pad_states(states[i:i + batch_size]))).float().cpu().numpy()
                           for i in range(0, len(states), batch_size)]) if states else np.zeros(0)


def fit_value_head(states: list[torch.Tensor], targets: np.ndarray, cfg: ValueConfig, low: float, high: float,
                   seed: int) -> tuple[ValueHead, dict, list[dict]]:
    """Train on (1 - heldout_fraction) of the rows, keep the epoch with the lowest held-out MSE."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(states))
    n_heldout = max(1, int(round(cfg.heldout_fraction * len(states))))
    heldout, fit = order[:n_heldout], order[n_heldout:]
    torch.manual_seed(seed)
    head = ValueHead(states[0].shape[-1], low, high, cfg.heads, cfg.dropout)
    with torch.no_grad():  # start at the mean target: the fit begins at MSE = variance, not saturated
        mean = float(np.clip((targets[fit].mean() - low) / (high - low), 1e-4, 1 - 1e-4))
        head.out.weight.zero_()
        head.out.bias.fill_(float(np.log(mean / (1 - mean))))
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.learning_rate)
    y = torch.tensor(targets, dtype=torch.float32)
    heldout_states, heldout_y = [states[i] for i in heldout], targets[heldout]
    best, best_state, curve = float("inf"), None, []
    for epoch in range(cfg.epochs):
        head.train()
        perm = rng.permutation(fit)
        train_loss = 0.0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            x, mask = pad_states([states[i] for i in idx])
            loss = torch.nn.functional.mse_loss(head(x, mask), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * len(idx) / len(perm)
        mse = float(np.mean((predict(head, heldout_states) - heldout_y) ** 2))
        curve.append({"step": epoch + 1, "train_mse": train_loss, "heldout_mse": mse})
        if mse < best:
            best, best_state = mse, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    pred = predict(head, heldout_states)
    return head, fit_quality(pred, heldout_y, best_epoch=int(np.argmin([c["heldout_mse"] for c in curve])) + 1), curve


def fit_quality(pred: np.ndarray, target: np.ndarray, **extra) -> dict:
    """Held-out MSE, R^2 and Pearson r (NaN-free: 0 when a side is constant)."""
    mse = float(np.mean((pred - target) ** 2))
    var = float(np.var(target))
    r2 = 1 - mse / var if var > 0 else 0.0
    r = float(np.corrcoef(pred, target)[0, 1]) if np.std(pred) > 0 and np.std(target) > 0 else 0.0
    return {"heldout_mse": mse, "heldout_r2": r2, "heldout_pearson_r": r, "heldout_rows": len(target), **extra}


def reward_range(cfg: ValueConfig, params: dict) -> tuple[float, float]:
    """[low, high] of the task reward: given, or inferred from weights of [0, 1]-bounded components."""
    from alol.errors import AlolError
    from alol.rewards import reward_configs

    if cfg.reward_range is not None:
        if len(cfg.reward_range) != 2 or cfg.reward_range[0] >= cfg.reward_range[1]:
            raise AlolError(f"estimate_value.reward_range must be [low, high] with low < high, got {cfg.reward_range}.")
        return float(cfg.reward_range[0]), float(cfg.reward_range[1])
    configs = reward_configs(params)
    unbounded = [name for name, c in configs.items() if (c.type or name) == "python"]
    if unbounded:
        raise AlolError(f"reward component(s) {unbounded} have no known range: set estimate_value.reward_range "
                        "to [low, high] of the total reward.")
    weights = [c.weight for c in configs.values()]
    return sum(min(w, 0.0) for w in weights), sum(max(w, 0.0) for w in weights)
