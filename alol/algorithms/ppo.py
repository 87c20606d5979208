"""PPO for language models, as pure functions: every formula on one screen, each with a hand-worked test.

Schulman et al., "Proximal Policy Optimization Algorithms" (2017): the clipped surrogate and the
clipped value loss; Schulman et al., "High-Dimensional Continuous Control Using Generalized
Advantage Estimation" (2016): GAE; Ziegler et al., "Fine-Tuning Language Models from Human
Preferences" (2019) and Stiennon et al., "Learning to summarize from human feedback" (2020): the
language-model setting, with a per-token KL penalty against the frozen reference and an adaptive
KL coefficient.

Tensors are (B, T) over the generated tokens, RIGHT-aligned as `alol.models.logprobs.collate` lays
completions out (left padding): position T - 1 is every reply's last token, `mask` is 1 on real
tokens. A reply is one episode: the state at t is (prompt, y_<t), the action y_t, and the episode
ends after the last token (no bootstrap beyond it).
"""

from __future__ import annotations

import dataclasses

import torch


def masked_mean(values, mask):
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values, mask):
    """(values - mean) / std over the real entries of the whole batch (std: the biased estimate)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


def kl_penalized_rewards(scores, logps, ref_logps, mask, kl_coef: float):
    """Per-token rewards r_t = -beta (log pi(y_t) - log pi_ref(y_t)), plus the sequence reward on the
    last token (Ziegler et al. 2019, eq. 2: R(x, y) - beta log(pi/pi_ref) spread over tokens).
    scores (B,); logps / ref_logps: the rollout policy's and the reference's token log-probs."""
    rewards = -kl_coef * (logps - ref_logps) * mask
    rewards[:, -1] = rewards[:, -1] + scores  # right-aligned: the last column is every reply's last token
    return rewards


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016), backwards over the tokens:
    delta_t = r_t + gamma V_{t+1} - V_t (V after the last token = 0),
    A_t = delta_t + gamma lam A_{t+1}; returns R_t = A_t + V_t (the value targets).
    Padding sits before each reply (right-aligned), so it never feeds a real token's sum."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
        next_value = values[:, t]
    returns = advantages + values
    return advantages * mask, returns * mask


def policy_loss(logps, old_logps, advantages, mask, cliprange: float):
    """Clipped surrogate (Schulman et al. 2017, eq. 7), negated for descent and averaged over tokens:
    -min(r A, clip(r, 1 - eps, 1 + eps) A), r = pi(y_t) / pi_old(y_t). Returns (loss, clip fraction)."""
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask).detach()


def value_loss(values, old_values, returns, mask, cliprange_value: float):
    """Clipped value loss (as in PPO's reference implementation, OpenAI baselines ppo2):
    0.5 max((V - R)^2, (clip(V, V_old - eps_v, V_old + eps_v) - R)^2), averaged over tokens.
    Returns (loss, clip fraction)."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask).detach()


@dataclasses.dataclass
class KLController:
    """The KL coefficient beta. Adaptive (Ziegler et al. 2019, section 2.2): after each batch of
    rollouts with mean sequence KL `kl`, beta <- beta (1 + clip(kl / target - 1, -0.2, 0.2) n / horizon),
    n the rollouts in the batch. target None: beta stays fixed."""

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n_steps / self.horizon
        return self.value
