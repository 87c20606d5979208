"""KTO (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"), written from
the paper: unpaired preference, each train reply desirable or not.

With r = log pi_theta(y|x) - log pi_ref(y|x) of a reply and z the KL estimate below (detached), the loss
of a desirable reply is lambda_D (1 - sigmoid(beta (r - z))), of an undesirable one
lambda_U (1 - sigmoid(beta (z - r))).

z estimates KL(pi_theta || pi_ref) at the batch's prompts by mismatched pairs, as the paper and TRL do:
each row's prompt with another row's reply (a fixed seeded derangement of the train rows), z =
max(0, mean over the micro-batch of log pi_theta(y'|x) - log pi_ref(y'|x)). The policy's side is a second
sequence per row (no gradient flows through z); the reference's side is computed once before training by
one frozen pass of the reference over the mismatched pairs (the advantages table already holds the
reference's log-prob of every row's own reply, `ref_logp`). As in TRL, z is a per-(micro-)batch mean, so
unlike the other losses the step's loss depends on how the batch is split into micro-batches.

Which replies are desirable: the data's `label` (unpaired preference data), else a reward at or above
finetune.kto_quantile of the train rewards (a thresholded score).
"""

from __future__ import annotations

import numpy as np
import torch

from alol.algorithms.record import Algorithm, Family
from alol.algorithms.run import train_on_plan
from alol.core.errors import AlolError


def kto(policy_logp, ref_logp, kl, desirable, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0):
    """Per-example KTO loss (B,). policy_logp, ref_logp: summed sequence log-probs (B,); kl: the detached
    estimate z (scalar); desirable: (B,) bool."""
    r = policy_logp - ref_logp
    return torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - kl))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (kl - r))))


def kl_estimate(mismatched_logp, ref_mismatched_logp):
    """z = max(0, mean(log pi_theta(y'|x) - log pi_ref(y'|x))) over mismatched pairs, detached."""
    return (mismatched_logp - ref_mismatched_logp).mean().clamp(min=0).detach()


def desirable(frame, quantile: float) -> tuple[np.ndarray, dict]:
    """Each row desirable or not: the `label` column where the data has one, else reward >= the quantile."""
    if "label" in frame.columns:
        return frame["label"].to_numpy().astype(bool), {"desirable_from": "label"}
    reward = frame["reward"].to_numpy()
    threshold = float(np.quantile(reward, quantile))
    return reward >= threshold, {"desirable_from": f"reward >= {threshold:.4g} (quantile {quantile})"}


def mismatched(n: int, seed: int) -> np.ndarray:
    """partner[i] != i for every row (n >= 2): a cyclic shift along a seeded permutation."""
    if n < 2:
        raise AlolError("kto's KL estimate pairs each prompt with another row's reply: it needs at least 2 train rows.")
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def loss_fn(cfg):
    from alol.models.logprobs import completion_logps

    def fn(model, batch):
        logps = completion_logps(model, batch)
        seq = (logps * batch["completion_mask"]).sum(-1).view(-1, 2)  # (own reply, mismatched reply) per row
        z = kl_estimate(seq[:, 1], batch["ref_mismatched_logp"])
        wanted = batch["desirable"] > 0.5
        per_example = kto(seq[:, 0], batch["ref_logp"], z, wanted, cfg.kto_beta, cfg.kto_desirable_weight,
                          cfg.kto_undesirable_weight)
        ratio = (seq[:, 0] - batch["ref_logp"]).detach()
        return per_example, {"kl": z.item(), "rewards/desirable_fraction": wanted.float().mean().item(),
                             "logps/ratio": ratio.mean().item()}

    return fn


def train(run):
    """Uniform passes over the train replies (each row: its own reply and a mismatched one)."""
    from alol.core.io import read_parquet
    from alol.models.logprobs import encode, forward_rows
    from alol.training.reference import load_frozen

    table = run.advantages / "train.parquet"
    frame = read_parquet(table, ["prompt", "completion", "reward", "ref_logp"])
    prompts, replies = frame["prompt"].to_list(), frame["completion"].to_list()
    partner = mismatched(len(replies), run.base.seed)
    limits = (run.base.max_prompt_tokens, run.base.max_completion_tokens)
    own = encode(run.tokenizer, prompts, replies, *limits)
    other = encode(run.tokenizer, prompts, [replies[j] for j in partner], *limits)
    reference = load_frozen(run.reference, run.model_cfg)  # once, before training: the mismatched pairs' log-probs
    ref_other, _ = forward_rows(reference, other, run.tokenizer.pad_token_id, want_states=False)
    del reference
    wanted, _ = desirable(frame, run.cfg.kto_quantile)
    extras = {"ref_logp": frame["ref_logp"].to_list(), "ref_mismatched_logp": [float(np.sum(t)) for t in ref_other],
              "desirable": wanted.astype(float).tolist()}
    return train_on_plan(run, [[a, b] for a, b in zip(own, other)], extras, loss_fn(run.cfg))


KTO = Family("kto", train)
ALGORITHMS = (Algorithm("kto", KTO, kto, ("ref_logp",), "uniform"),)
