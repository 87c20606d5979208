"""The offline family: every offline loss, as pure functions of per-token log-probs (Baheti et al.,
ICLR 2024, and its baselines; see ../shared/spec/alol-method.md section 2), their records, and the
family's train function (the plan's rows of the advantages table, through alol.training.loop).

Inputs are completion-only tensors: `logps` (B, T) log pi_theta(y_t | x, y_<t) with gradient,
`mask` (B, T) 1 on real completion tokens (EOS included), `ref_logps` (B, T) the frozen
reference's log-probs (a precomputed Parquet column, so no second model), `reward` / `advantage`
(B,). Each function returns the PER-EXAMPLE loss (B,); the trainer sums and divides by the
examples in the whole accumulated batch, so the batch loss is the mean over examples and is
invariant to how the batch is split. Importance weights are always detached: every method's
gradient is a weighted NLL gradient. Ratios are formed in log space, exponentiated, clamped.
"""

from __future__ import annotations

import torch

from alol.algorithms.record import Algorithm, Family
from alol.algorithms.run import train_on_plan
from alol.core.errors import AlolError


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


# the advantages table's columns a loss may read -> the loss's argument (any other column: its own name)
ARGUMENTS = {"reward": "reward", "advantage": "advantage", "ref_token_logps": "ref_logps"}
TABLE_COLUMNS = ("prompt", "completion", "reward", "advantage", "ref_token_logps")
"""What the family reads of the advantages table (the plan's step scale needs the advantage)."""


def loss_fn(algorithm: Algorithm, cfg):
    """loss_fn(model, batch) -> (per-example loss, stats) for the training loop; cfg: finetune's settings."""
    from alol.models.logprobs import completion_logps

    def fn(model, batch):
        logps = completion_logps(model, batch)
        mask = batch["completion_mask"]
        columns = {ARGUMENTS.get(c, c): batch[c] for c in algorithm.reads}
        per_example = algorithm.loss(logps=logps, mask=mask, ppo_clip=cfg.ppo_clip, kl_beta=cfg.kl_beta, **columns)
        stats = offline_stats(logps, mask, batch.get("ref_token_logps"), batch.get("advantage"),
                              cfg.ppo_clip if algorithm.clipped else None)
        return per_example, stats

    return fn


def encode_rows(frame, tokenizer, algorithm: Algorithm, max_prompt_tokens: int, max_completion_tokens: int,
                source: str):
    """One sequence per row, and the precomputed columns the algorithm's loss reads."""
    from alol.models.logprobs import encode

    examples = encode(tokenizer, frame["prompt"].to_list(), frame["completion"].to_list(), max_prompt_tokens,
                      max_completion_tokens)
    extras = {column: frame[column].to_list() for column in algorithm.reads}
    if "ref_token_logps" in extras:
        bad = [i for i, (e, r) in enumerate(zip(examples, extras["ref_token_logps"])) if len(e.completion_ids) != len(r)]
        if bad:
            raise AlolError(f"{source} row {bad[0]}: ref_token_logps has a different length than the completion's "
                            "tokens; base.max_completion_tokens changed since the advantages stage ran. Rerun it "
                            "(dvc repro).")
    return [[e] for e in examples], extras


def train(run):
    """The plan's rows of the advantages table, weighted by the algorithm's loss."""
    from alol.core.io import read_parquet
    from alol.training.plans import step_scales

    table = run.advantages / "train.parquet"
    frame = read_parquet(table, [*TABLE_COLUMNS, *(c for c in run.algorithm.reads if c not in TABLE_COLUMNS)])
    rows, extras = encode_rows(frame, run.tokenizer, run.algorithm, run.base.max_prompt_tokens,
                               run.base.max_completion_tokens, str(table))
    return train_on_plan(run, rows, extras, loss_fn(run.algorithm, run.cfg),
                         step_scale=step_scales(frame).get(run.strategy, 1.0))


def needs_kl_beta(cfg) -> None:
    if cfg.kl_beta <= 0:
        raise AlolError(f"a_lol_kl needs finetune.kl_beta > 0 (got {cfg.kl_beta}); with 0 it is a_lol_ref_free.")


OFFLINE = Family("offline", train, chooses_plan=True)
REF, ADV = "ref_token_logps", "advantage"
ALGORITHMS = (
    Algorithm("nll", OFFLINE, losses_nll, (), "uniform"),
    Algorithm("wbc", OFFLINE, losses_wbc, ("reward",), "reward_priority"),
    Algorithm("r_gold", OFFLINE, losses_r_gold, ("reward",), "reward_priority"),
    Algorithm("r_lol", OFFLINE, losses_r_lol, ("reward", REF), "reward_priority", clipped=True),
    Algorithm("a_lol", OFFLINE, losses_a_lol, (ADV, REF), "good_priority", clipped=True),
    Algorithm("a_lol_ref_free", OFFLINE, losses_a_lol_ref_free, (ADV,), "good_priority"),
    Algorithm("a_lol_seq", OFFLINE, losses_a_lol_seq, (ADV, REF), "good_priority", clipped=True),
    Algorithm("a_lol_kl", OFFLINE, losses_a_lol_kl, (ADV, REF), "good_priority", check=needs_kl_beta),
    # reward-filtered fine-tuning (rejection-sampling SFT / RAFT / ReST's improve step): plain NLL on the replies
    # at or above plan.rft_quantile of the train rewards, for plan.steps x the kept fraction (the plan's filter)
    Algorithm("rft", OFFLINE, losses_nll, (), "reward_filtered"),
)
"""The offline algorithms, in the order tables and sweeps list them (a new loss: its record here)."""
