"""Every training loss, as pure functions of per-token log-probs (Baheti et al., ICLR 2024, and
its baselines; see ../shared/spec/alol-method.md section 2).

Inputs are completion-only tensors: `logps` (B, T) log pi_theta(y_t | x, y_<t) with gradient,
`mask` (B, T) 1 on real completion tokens (EOS included), `ref_logps` (B, T) the frozen
reference's log-probs (a precomputed Parquet column, so no second model), `reward` / `advantage`
(B,). Each function returns the PER-EXAMPLE loss (B,); the trainer sums and divides by the
examples in the whole accumulated batch, so the batch loss is the mean over examples and is
invariant to how the batch is split. Importance weights are always detached: every method's
gradient is a weighted NLL gradient. Ratios are formed in log space, exponentiated, clamped.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import torch
import torch.nn.functional as F


def nll(logps, mask):
    """Summed (not mean) token NLL of each completion."""
    return -(logps * mask).sum(-1)


def seq_ratio(logps, ref_logps, mask):
    """pi_theta(y|x) / pi_ref(y|x), detached."""
    return torch.exp(((logps - ref_logps) * mask).sum(-1)).detach()


def losses_nll(logps, mask, **_):
    return nll(logps, mask)


def losses_wbc(logps, mask, reward, **_):
    return reward * nll(logps, mask)


def losses_r_gold(logps, mask, reward, **_):
    """R * sum_t max(p_t, 0.1) * l_t, p_t the policy's own (detached) token probability."""
    weight = logps.detach().exp().clamp(min=0.1)
    return reward * -(weight * logps * mask).sum(-1)


def losses_r_lol(logps, mask, reward, ref_logps, ppo_clip, **_):
    rho = seq_ratio(logps, ref_logps, mask).clamp(1 - ppo_clip, 1 + ppo_clip)
    return rho * reward * nll(logps, mask)


def losses_a_lol(logps, mask, advantage, ref_logps, ppo_clip, **_):
    rho = seq_ratio(logps, ref_logps, mask).clamp(1 - ppo_clip, 1 + ppo_clip)
    return rho * advantage.clamp(min=0) * nll(logps, mask)


def losses_a_lol_ref_free(logps, mask, advantage, **_):
    return advantage.clamp(min=0) * nll(logps, mask)


def losses_a_lol_seq(logps, mask, advantage, ref_logps, ppo_clip, **_):
    """Per-token importance weights w_t = pi_theta(y_t) / pi_ref(y_t), each clamped."""
    w = torch.exp(logps - ref_logps).detach().clamp(1 - ppo_clip, 1 + ppo_clip)
    return advantage.clamp(min=0) * -(w * logps * mask).sum(-1)


def losses_a_lol_kl(logps, mask, advantage, ref_logps, kl_beta, **_):
    """A+ * NLL + beta * (NLL_ref - NLL): a one-sample KL estimate on the data response."""
    policy_nll = nll(logps, mask)
    return advantage.clamp(min=0) * policy_nll + kl_beta * (nll(ref_logps, mask) - policy_nll)


def dpo(chosen_logp, rejected_logp, ref_chosen_logp=None, ref_rejected_logp=None, beta=0.1):
    """-log sigmoid(beta * (policy log-ratio - reference log-ratio)); no reference: its ratio is 0.

    Arguments are summed sequence log-probs (B,)."""
    ref = 0.0 if ref_chosen_logp is None else ref_chosen_logp - ref_rejected_logp
    return -F.logsigmoid(beta * ((chosen_logp - rejected_logp) - ref))


def pro(scores, rewards, nll_best, sft_weight=0.05):
    """Preference Ranking Optimisation (Song et al., 2024) over n candidates sorted best-first.

    scores (B, n): length-normalised log-probs; rewards (B, n): raw reward scores. At rank k the
    candidates j >= k compete with temperatures T_kj = r_k - r_j (T_kk = max_j T_kj); the loss is
    -log softmax at k. For n = 2 that is log(exp(s0 T) + exp(s1 T)) - s0 T, T = r0 - r1. Plus
    sft_weight * (n - 1)^2 * NLL(best)."""
    n = scores.shape[1]
    total = torch.zeros(scores.shape[0], dtype=scores.dtype, device=scores.device)
    for k in range(n - 1):
        temps = (rewards[:, k:k + 1] - rewards[:, k + 1:]).detach()
        temps = torch.cat([temps.max(dim=1, keepdim=True).values, temps], dim=1)
        logits = scores[:, k:] * temps
        total = total + torch.logsumexp(logits, dim=1) - logits[:, 0]
    return total + sft_weight * (n - 1) ** 2 * nll_best


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """Everything the pipeline needs to know about one algorithm; the rest is derived from it."""

    name: str
    loss: Callable | None
    """Offline: the per-example loss above; preference: dpo or pro (rows of candidates, best first);
    online: None (the loss lives in its trainer: alol.algorithms.ppo's clipped objective, or TRL's)."""
    reads: tuple[str, ...]
    """The precomputed columns its loss reads: offline from the advantages table, preference from the pairs."""
    strategy: str
    """Its default sampling strategy (finetune.sampling_strategy: auto); "online" for rollouts (no plan)."""
    clipped: bool = False
    """Clamps importance ratios to [1 - ppo_clip, 1 + ppo_clip] (so ppo_clip must be > 0)."""
    online: Literal["alol", "trl"] | None = None
    """Online: trains on replies sampled from the current policy and scored with the task's reward, in
    alol's PPO loop (alol.algorithms.ppo_trainer) or through TRL's trainer (alol.algorithms.trl). None: offline."""

    @property
    def pairs(self) -> bool:
        """Trains on preference pairs (the sample stage's output), not on the offline rows."""
        return self.strategy == "pairs"

    @property
    def needs_ref(self) -> bool:
        return any(c.startswith("ref_") for c in self.reads)

    @property
    def needs_advantage(self) -> bool:
        return "advantage" in self.reads

    @property
    def strategies(self) -> tuple[str, ...]:
        """The sampling strategies that fit its loss: uniform passes, or priority by the signal it weights by
        (the advantage may also draw from every candidate: all_priority); preference pairs only for pairs."""
        if self.pairs or self.online:
            return (self.strategy,)
        return ("uniform",) + ((self.strategy,) if self.strategy != "uniform" else ()) + (
            ("all_priority",) if self.needs_advantage else ())


REF, ADV = "ref_token_logps", "advantage"
ALGORITHMS = {a.name: a for a in (
    Algorithm("nll", losses_nll, (), "uniform"),
    Algorithm("wbc", losses_wbc, ("reward",), "reward_priority"),
    Algorithm("r_gold", losses_r_gold, ("reward",), "reward_priority"),
    Algorithm("r_lol", losses_r_lol, ("reward", REF), "reward_priority", clipped=True),
    Algorithm("a_lol", losses_a_lol, (ADV, REF), "good_priority", clipped=True),
    Algorithm("a_lol_ref_free", losses_a_lol_ref_free, (ADV,), "good_priority"),
    Algorithm("a_lol_seq", losses_a_lol_seq, (ADV, REF), "good_priority", clipped=True),
    Algorithm("a_lol_kl", losses_a_lol_kl, (ADV, REF), "good_priority"),
    Algorithm("dpo", dpo, ("ref_chosen_logp", "ref_rejected_logp"), "pairs"),
    Algorithm("dpo_ref_free", dpo, (), "pairs"),
    # PRO's temperature is the difference of RAW reward scores (a reward model's logit, spec section 2)
    Algorithm("pro", pro, ("chosen_raw_reward", "rejected_raw_reward"), "pairs"),
    # online: rollouts of the current policy on the train prompts (compare: their cost in generated tokens)
    Algorithm("ppo", None, (), "online", online="alol"),
    Algorithm("grpo", None, (), "online", online="trl"),
    Algorithm("rloo", None, (), "online", online="trl"),
)}
"""Every algorithm by name, in the order tables and sweeps list them."""


def offline_stats(logps, mask, ref_logps=None, advantage=None, ppo_clip=None) -> dict[str, float]:
    """TRL-style metrics of one batch (no gradient)."""
    with torch.no_grad():
        out = {"logps/policy": (logps * mask).sum(-1).mean().item()}
        if advantage is not None:
            out["advantage/mean"] = advantage.mean().item()
            out["advantage/positive_fraction"] = (advantage > 0).float().mean().item()
        if ref_logps is not None:
            log_ratio = ((logps - ref_logps) * mask).sum(-1)
            out["logps/ref"] = (ref_logps * mask).sum(-1).mean().item()
            out["ratio/mean"] = log_ratio.exp().mean().item()
            out["kl"] = log_ratio.mean().item()  # sample estimate of KL(pi_theta || pi_ref) on data
            if ppo_clip is not None:
                ratio = log_ratio.exp()
                out["ratio/clip_fraction"] = ((ratio < 1 - ppo_clip) | (ratio > 1 + ppo_clip)).float().mean().item()
        return out
