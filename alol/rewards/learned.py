"""A reward model learned from the data's own scores: a linear head on a frozen sentence encoder.

The features of a (context, reply) are [e_c, e_r, e_c * e_r], e the encoder's L2-normalised MiniLM
embedding (alol.rewards.relevance.SentenceEncoder): what the relevance reward compares, plus both
texts on their own. The encoder stays frozen (fine-tuning it on 2 CPU cores would cost minutes per
thousand rows); the head is fit full-batch by L-BFGS on one of three losses, each the mean over rows
plus l2 * |w|^2 (the bias is not penalised):

    regression     (s - y)^2                           y the (transformed) score: s predicts its scale
    logistic       log(1 + e^-s) if y else log(1 + e^s)  y a label: the reward is sigmoid(s) = P(label)
    bradley_terry  log(1 + e^-(s_chosen - s_rejected))  pairs: the reward is the logit s (TRL's RewardTrainer)

The l2 strength is selected on half of the held-out (validation) conversations, by the same loss; the
other half reports the fit (R^2, AUC or pairwise accuracy, with a bootstrap CI) and how far the learned
mean is from the data's own mean there.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("regression", "logistic", "bradley_terry")


def regression_loss(score: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((score - target) ** 2).mean()


def logistic_loss(score: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    # log(1 + e^-s) for a positive label, log(1 + e^s) for a negative one
    return F.softplus(torch.where(label > 0.5, -score, score)).mean()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    return F.softplus(rejected - chosen).mean()


@dataclasses.dataclass
class Head:
    """s(x) = x . weight + bias."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


@dataclasses.dataclass
class Rows:
    """Features and targets of one loss: x (n, d) and y (n,); for bradley_terry x the chosen replies'
    features and `rejected` the rejected ones' (y unused)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    rejected: torch.Tensor | None = None

    def take(self, idx: np.ndarray) -> "Rows":
        pick = lambda t: None if t is None else t[torch.as_tensor(idx, dtype=torch.long)]  # noqa: E731
        return Rows(pick(self.x), pick(self.y), pick(self.rejected))

    def __len__(self) -> int:
        return len(self.x)


def loss(kind: str, head: Head, rows: Rows) -> torch.Tensor:
    if kind == "regression":
        return regression_loss(head(rows.x), rows.y)
    if kind == "logistic":
        return logistic_loss(head(rows.x), rows.y)
    return bradley_terry_loss(head(rows.x), head(rows.rejected))


def fit_head(kind: str, rows: Rows, l2: float, max_iter: int = 200) -> Head:
    """Minimise mean loss + l2 |w|^2 by full-batch L-BFGS from w = 0 and the bias at the best constant."""
    d = rows.x.shape[1]
    start = {"regression": lambda: rows.y.mean(),
             "logistic": lambda: torch.logit(rows.y.mean().clamp(1e-3, 1 - 1e-3)),
             "bradley_terry": lambda: torch.tensor(0.0)}[kind]()
    weight = torch.zeros(d, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(float(start), dtype=torch.float64, requires_grad=kind != "bradley_terry")  # BT: cancels
    rows = Rows(rows.x.double(), None if rows.y is None else rows.y.double(),
                None if rows.rejected is None else rows.rejected.double())
    params = [weight] + ([bias] if bias.requires_grad else [])
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        value = loss(kind, Head(weight, bias), rows) + l2 * (weight ** 2).sum()
        value.backward()
        return value

    optimizer.step(closure)
    return Head(weight.detach().float(), bias.detach().float())


def select(kind: str, fit: Rows, held: Rows, strengths: list[float], max_iter: int = 200) -> tuple[Head, float, list]:
    """Fit one head per l2 strength; keep the lowest held-out loss. Returns (head, its l2, the curve)."""
    curve, heads = [], []
    for l2 in strengths:
        heads.append(fit_head(kind, fit, l2, max_iter))
        with torch.no_grad():
            curve.append({"l2": l2, "fit_loss": float(loss(kind, heads[-1], fit)),
                          "select_loss": float(loss(kind, heads[-1], held))})
    best = int(np.argmin([c["select_loss"] for c in curve]))
    return heads[best], strengths[best], curve


def predict(kind: str, head: Head, x: torch.Tensor) -> np.ndarray:
    """The reward of rows with features x: the regression's value, the label's probability, the pair logit."""
    with torch.no_grad():
        s = head(x.float())
        return (torch.sigmoid(s) if kind == "logistic" else s).double().numpy()


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (the Mann-Whitney form of ROC AUC)."""
    from scipy.stats import rankdata

    pos = label > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def quality(kind: str, learned: np.ndarray, data: np.ndarray, rejected: np.ndarray | None = None,
            resamples: int = 2000, seed: int = 0) -> dict:
    """How well the learned reward agrees with the data's on held-out rows, with 95% bootstrap CIs over rows:
    regression R^2 and Pearson r, logistic AUC, bradley_terry pairwise accuracy (chosen scored higher); and
    the learned mean against the data's own mean (regression, logistic: both on the reward's scale)."""
    from alol.evaluation.stats import draw, percentile_interval

    n = len(learned)
    idx = draw(np.random.default_rng(seed), n, resamples)
    out: dict = {"rows": n}
    if kind == "bradley_terry":
        right = (learned > rejected).astype(float) + 0.5 * (learned == rejected)
        out["pairwise_accuracy"] = float(right.mean())
        out["pairwise_accuracy_ci"] = list(percentile_interval(right[idx].mean(axis=1), 0.95))
        return out
    if kind == "regression":
        def r2(p, y):
            sse = ((p - y) ** 2).sum(-1)
            sst = ((y - y.mean(-1, keepdims=True)) ** 2).sum(-1)
            return 1 - sse / np.where(sst > 0, sst, np.nan)
        out["r2"] = float(r2(learned, data))
        out["r2_ci"] = list(percentile_interval(np.nan_to_num(r2(learned[idx], data[idx])), 0.95))
        both = np.std(learned) > 0 and np.std(data) > 0
        out["pearson_r"] = float(np.corrcoef(learned, data)[0, 1]) if both else 0.0
    else:
        out["auc"] = auc(learned, data)
        aucs = np.array([auc(learned[i], data[i]) for i in idx[:1000]])
        out["auc_ci"] = list(percentile_interval(aucs[np.isfinite(aucs)], 0.95)) if np.isfinite(aucs).any() else None
    diff = learned - data
    out["mean_learned"], out["mean_data"] = float(learned.mean()), float(data.mean())
    out["mean_difference"] = float(diff.mean())
    out["mean_difference_ci"] = list(percentile_interval(diff[idx].mean(axis=1), 0.95))
    return out
