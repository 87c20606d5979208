"""The value of the reference policy at a prompt, V(x) (spec section 3).

A frozen reference reads the prompt; one learned query attends over its last-layer states
(8 heads, padding masked); dropout 0.1 before and after; Linear(d, 1); sigmoid scaled to the
task's reward range where the reward is bounded, else linear (centred and scaled on the fit targets: a
log1p or z-scored score column, a learned reward's logit, a `python` reward have no range to squash into). Fit by MSE to the reward of the reference's own greedy reply on validation
prompts. The rows are split by conversation (group_id) three ways: fit / select (picks the epoch;
the reference picks by training MSE) / report (the fit quality in metrics.json), so neither
held-out number sees a conversation trained on, and the reported one is not the one maximised.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alol.core.device import place

from alol.models.generate import GenerationConfig
from alol.models.padding import pad_right


@dataclasses.dataclass
class ValueConfig:
    """`estimate_value:` generation on validation prompts and the value-head fit."""

    generation: GenerationConfig = dataclasses.field(default_factory=lambda: GenerationConfig(max_new_tokens=32))
    """How the reference's replies to validation prompts are generated (greedy by default)."""
    replies_per_prompt: int = 1
    """Replies generated per validation prompt; V(x) is fit to their mean reward. 1 greedy reply is the
    paper's setting; more (with generation.do_sample) estimate the reference's expected reward at x."""
    epochs: int = 30
    """Passes over the value-head training part."""
    learning_rate: float = 1.0e-4
    """AdamW learning rate of the value head (the reference: 1e-5 with a 7B model, 10 epochs)."""
    batch_size: int = 16
    """Value-head batch size."""
    heldout_fraction: float = 0.2
    """Share of validation conversations (group_id) held out: half pick the epoch, the other half
    give the reported fit quality (R^2, MSE, correlation)."""
    heads: int = 8
    """Attention heads of the pooling."""
    dropout: float = 0.1
    """Dropout before and after the pooling (train mode only)."""

    def __post_init__(self):
        if self.replies_per_prompt < 1:
            raise ValueError("replies_per_prompt must be at least 1")
        if self.replies_per_prompt > 1 and not self.generation.do_sample:
            raise ValueError(f"replies_per_prompt: {self.replies_per_prompt} greedy replies would all be the same; "
                             "set generation.do_sample: true")
    reward_range: list[float] | None = None
    """[low, high] the value is squashed into; null infers it from the reward weights and each type's
    bounds, and leaves the value unsquashed (linear) when a component has no known range."""


class ValueHead(nn.Module):
    """low/high None: an unbounded reward, V = center + scale * score (center, scale: the fit targets' mean
    and standard deviation, so the linear output starts at unit scale as the sigmoid's does)."""

    def __init__(self, hidden_size: int, low: float | None, high: float | None, heads: int = 8, dropout: float = 0.1,
                 center: float = 0.0, scale: float = 1.0):
        super().__init__()
        # the frozen LM's last-layer states are far from unit scale (SmolLM2: std 2, peaks of 50):
        # normalise them so that the head's fit does not start saturated
        self.norm = nn.LayerNorm(hidden_size)
        self.query = nn.Parameter(torch.randn(1, 1, hidden_size) * hidden_size ** -0.5)
        self.attention = nn.MultiheadAttention(hidden_size, heads, batch_first=True)
        self.dropout_in, self.dropout_out = nn.Dropout(dropout), nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1)
        self.bounded = low is not None
        if self.bounded:  # (the bounded head's buffers keep their names: saved heads load as before)
            self.register_buffer("low", torch.tensor(float(low)))
            self.register_buffer("high", torch.tensor(float(high)))
        else:
            self.register_buffer("center", torch.tensor(float(center)))
            self.register_buffer("scale", torch.tensor(float(scale)))

    @property
    def device(self) -> torch.device:
        return self.out.weight.device

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """states (B, L, d) of prompt tokens, mask (B, L) 1 on real tokens -> V (B,)."""
        x = self.dropout_in(self.norm(states))
        pooled, _ = self.attention(self.query.expand(len(x), -1, -1), x, x, key_padding_mask=mask == 0,
                                   need_weights=False)
        score = self.out(self.dropout_out(pooled[:, 0])).squeeze(-1)
        if not self.bounded:
            return self.center + self.scale * score
        return self.low + (self.high - self.low) * torch.sigmoid(score)

    def predict(self, states: list[torch.Tensor]) -> np.ndarray:
        """V of each row's (L_i, d) prompt states (`predict`)."""
        return predict(self, states)

    def save(self, folder: Path, meta: dict) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in self.state_dict().items()}, folder / "value_head.safetensors")
        ends = {"low": float(self.low), "high": float(self.high)} if self.bounded else {
            "low": None, "high": None, "center": float(self.center), "scale": float(self.scale)}
        config = {"hidden_size": self.query.shape[-1], **ends, "heads": self.attention.num_heads,
                  "dropout": self.dropout_in.p, **meta}
        (folder / "config.json").write_text(json.dumps(config, indent=2))

    @classmethod
    def load(cls, folder: Path) -> tuple["ValueHead", dict]:
        from safetensors.torch import load_file

        config = json.loads((folder / "config.json").read_text())
        head = cls(config["hidden_size"], config["low"], config["high"], config["heads"], config["dropout"],
                   config.get("center", 0.0), config.get("scale", 1.0))
        head.load_state_dict(load_file(folder / "value_head.safetensors"))
        return place(head.eval(), "value head"), config


@torch.inference_mode()
def predict(head: ValueHead, states: list[torch.Tensor], batch_size: int = 64) -> np.ndarray:
    head.eval()
    device = head.device
    batches = (pad_right(states[i:i + batch_size], 0.0, torch.float32) for i in range(0, len(states), batch_size))
    return np.concatenate([head(*(t.to(device) for t in batch)).float().cpu().numpy()
                           for batch in batches]) if states else np.zeros(0)


def group_split(groups: list[str], heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit, select, report) row indices, whole groups each: a seeded heldout_fraction of the groups
    (at least 2) is held out, its first half (at least 1) selects the epoch, the rest reports."""
    from alol.core.errors import AlolError

    names = sorted(set(groups))
    if len(names) < 3:
        raise AlolError(f"estimate_value: the validation rows come from {len(names)} conversation(s) (group_id); "
                        "the value fit needs at least 3 (fit / select / report). Use more validation rows.")
    order = np.random.default_rng(seed).permutation(len(names))
    n_heldout = min(len(names) - 1, max(2, int(round(heldout_fraction * len(names)))))
    n_select = max(1, n_heldout // 2)
    part = {names[g]: 1 if rank < n_select else 2 if rank < n_heldout else 0 for rank, g in enumerate(order)}
    of_row = np.array([part[g] for g in groups])
    return tuple(np.flatnonzero(of_row == k) for k in (0, 1, 2))


def fit_value_head(states: list[torch.Tensor], targets: np.ndarray, groups: list[str], cfg: ValueConfig,
                   low: float | None, high: float | None, seed: int) -> tuple[ValueHead, dict, list[dict]]:
    """Train on the fit groups, keep the epoch with the lowest MSE on the select groups, report the
    fit quality on the report groups (see group_split). low/high None: an unbounded (linear) head."""
    fit, select, report = group_split(groups, cfg.heldout_fraction, seed)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    spread = float(np.std(targets[fit])) or 1.0
    head = place(ValueHead(states[0].shape[-1], low, high, cfg.heads, cfg.dropout, center=float(targets[fit].mean()),
                           scale=spread), "value head")
    with torch.no_grad():  # start at the mean target: the fit begins at MSE = variance, not saturated
        head.out.weight.zero_()
        if head.bounded:
            mean = float(np.clip((targets[fit].mean() - low) / (high - low), 1e-4, 1 - 1e-4))
            head.out.bias.fill_(float(np.log(mean / (1 - mean))))
        else:  # center is the mean already
            head.out.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.learning_rate)
    y = torch.tensor(targets, dtype=torch.float32, device=head.device)
    select_states, select_y = [states[i] for i in select], targets[select]
    best, best_state, curve = float("inf"), None, []
    for epoch in range(cfg.epochs):
        head.train()
        perm = rng.permutation(fit)
        train_loss = 0.0
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            x, mask = (t.to(y.device) for t in pad_right([states[i] for i in idx], 0.0, torch.float32))
            loss = torch.nn.functional.mse_loss(head(x, mask), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * len(idx) / len(perm)
        mse = float(np.mean((predict(head, select_states) - select_y) ** 2))
        curve.append({"step": epoch + 1, "train_mse": train_loss, "select_mse": mse})
        if mse < best:
            best, best_state = mse, {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    pred = predict(head, [states[i] for i in report])
    return head, fit_quality(pred, targets[report], best_epoch=int(np.argmin([c["select_mse"] for c in curve])) + 1,
                             select_mse=best, select_rows=len(select), fit_rows=len(fit)), curve


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - SSE / SST over all rows (0 when the target is constant)."""
    var = float(np.var(target))
    return 1 - float(np.mean((pred - target) ** 2)) / var if var > 0 else 0.0


def fit_quality(pred: np.ndarray, target: np.ndarray, **extra) -> dict:
    """Held-out MSE, R^2 and Pearson r on the report rows (NaN-free: 0 when a side is constant)."""
    mse = float(np.mean((pred - target) ** 2))
    r = float(np.corrcoef(pred, target)[0, 1]) if np.std(pred) > 0 and np.std(target) > 0 else 0.0
    return {"heldout_mse": mse, "heldout_r2": r2(pred, target), "heldout_pearson_r": r, "heldout_rows": len(target),
            **extra}


def reward_range(cfg: ValueConfig, params: dict) -> tuple[float, float] | tuple[None, None]:
    """[low, high] of the task reward: given, or the weighted sum of each component's bounds (its type's
    record, for its settings); (None, None) when a component has no known range: the value is then linear."""
    from alol.core.errors import AlolError
    from alol.rewards import reward_bounds, reward_configs

    if cfg.reward_range is not None:
        if len(cfg.reward_range) != 2 or cfg.reward_range[0] >= cfg.reward_range[1]:
            raise AlolError(f"estimate_value.reward_range must be [low, high] with low < high, got {cfg.reward_range}.")
        return float(cfg.reward_range[0]), float(cfg.reward_range[1])
    bounds = [(c.weight, reward_bounds(c)) for c in reward_configs(params).values()]
    if any(b is None for _, b in bounds):  # squashing into a guessed range would distort the fit: stay linear
        return None, None
    ends = [(weight * low, weight * high) for weight, (low, high) in bounds]
    return sum(min(e) for e in ends), sum(max(e) for e in ends)
