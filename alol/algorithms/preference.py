"""The preference family: dpo, dpo_ref_free and pro on the sample stage's pairs (alol.training.pairs),
each row a set of candidates best first (here two: chosen, rejected), trained through alol.training.loop.

An objective takes `seq` (B, n) summed completion log-probs, `lengths` (B, n) completion tokens, the
record's `reads` columns of the pairs table as (B,) tensors in the record's order, and finetune's
settings; it returns the per-example loss (B,) and the batch's stats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alol.algorithms.record import Algorithm, Family
from alol.algorithms.run import train_on_plan


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


def dpo_objective(seq, lengths, columns, cfg):
    """DPO on (chosen, rejected); `columns`: the reference's summed log-probs of both, or none (ref-free)."""
    per_example = dpo(seq[:, 0], seq[:, 1], *columns, beta=cfg.dpo_beta)
    margin = seq[:, 0] - seq[:, 1]
    return per_example, {"logps/margin": margin.mean().item(), "logps/chosen": seq[:, 0].mean().item(),
                         "logps/rejected": seq[:, 1].mean().item()}


def pro_objective(seq, lengths, columns, cfg):
    """PRO on length-normalised log-probs; `columns`: the candidates' raw reward scores (logits), best first."""
    scores = seq / lengths  # length-normalised
    rewards = torch.stack(columns, dim=1)  # raw scores (logits)
    per_example = pro(scores, rewards, -seq[:, 0], sft_weight=cfg.pro_sft_weight)
    return per_example, {"logps/best": seq[:, 0].mean().item()}


def loss_fn(algorithm: Algorithm, cfg, candidates: int = 2):
    """loss_fn(model, batch) -> (per-example loss, stats); rows are `candidates` sequences each, best first."""
    from alol.models.logprobs import completion_logps

    def fn(model, batch):
        logps = completion_logps(model, batch)
        mask = batch["completion_mask"]
        seq = (logps * mask).sum(-1).view(-1, candidates)
        return algorithm.loss(seq, mask.sum(-1).view(-1, candidates), [batch[c] for c in algorithm.reads], cfg)

    return fn


def encode_rows(pairs, tokenizer, algorithm: Algorithm, max_prompt_tokens: int, max_completion_tokens: int):
    """(chosen, rejected) sequences per row, and the pairs' columns the algorithm reads."""
    from alol.models.logprobs import encode

    prompts = pairs["prompt"].to_list()
    chosen = encode(tokenizer, prompts, pairs["chosen"].to_list(), max_prompt_tokens, max_completion_tokens)
    rejected = encode(tokenizer, prompts, pairs["rejected"].to_list(), max_prompt_tokens, max_completion_tokens)
    return [[c, r] for c, r in zip(chosen, rejected)], {c: pairs[c].to_list() for c in algorithm.reads}


def train(run):
    """The pairs plan's rows of the sample stage's pairs."""
    from alol.training.pairs import PAIR_COLUMNS
    from alol.core.errors import AlolError
    from alol.core.io import read_parquet

    if run.pairs is None:
        raise AlolError(f"{run.algorithm.name} trains on preference pairs: pass --pairs (the sample stage's output).")
    rows, extras = encode_rows(read_parquet(run.pairs, PAIR_COLUMNS), run.tokenizer, run.algorithm,
                               run.base.max_prompt_tokens, run.base.max_completion_tokens)
    return train_on_plan(run, rows, extras, loss_fn(run.algorithm, run.cfg))  # the pairs plan takes plan.steps


PREFERENCE = Family("preference", train)
ALGORITHMS = (
    Algorithm("dpo", PREFERENCE, dpo_objective, ("ref_chosen_logp", "ref_rejected_logp"), "pairs"),
    Algorithm("dpo_ref_free", PREFERENCE, dpo_objective, (), "pairs"),
    # PRO's temperature is the difference of RAW reward scores (a reward model's logit, spec section 2)
    Algorithm("pro", PREFERENCE, pro_objective, ("chosen_raw_reward", "rejected_raw_reward"), "pairs"),
)
"""The preference algorithms, in the order tables and sweeps list them."""
