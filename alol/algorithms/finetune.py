"""Finetuning with any algorithm: settings, validation, and the loss a training batch gets."""

from __future__ import annotations

import dataclasses

import torch

from alol.algorithms import losses
from alol.core.errors import AlolError
from alol.models.generate import GenerationConfig
from alol.models.logprobs import completion_logps
from alol.training.loop import TrainConfig

@dataclasses.dataclass
class PPOConfig:
    """`finetune.ppo:` online PPO (algorithm: ppo). Defaults sized for the default task on 2 CPU cores
    (one `dvc exp run -S algorithm=ppo` within 15 minutes); pipelines/hh/params.yaml has the authors'."""

    steps: int = 8
    """PPO steps: batches of rollouts, each trained on for `ppo_epochs` (authors: not stated)."""
    rollout_batch_size: int = 16
    """Prompts per PPO step, one sampled reply each, over all processes (authors: 16)."""
    ppo_epochs: int = 2
    """Passes over each batch of rollouts (authors: 4)."""
    gamma: float = 1.0
    """GAE discount over the reply's tokens."""
    lam: float = 0.95
    """GAE lambda."""
    cliprange: float = 0.2
    """eps of the clipped surrogate: ratios outside [1 - eps, 1 + eps] give no gradient."""
    cliprange_value: float = 0.2
    """eps_v: new values stay within old value +- eps_v in the clipped value loss."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss (the value head shares the policy's trunk)."""
    init_kl_coef: float = 0.2
    """beta at the start: per-token reward -beta (log pi - log pi_ref)."""
    target_kl: float | None = 6.0
    """Target of the adaptive KL controller (mean KL per reply, nats); null: beta stays fixed."""
    horizon: int = 10000
    """Horizon of the adaptive KL controller (rollouts)."""
    whiten_rewards: bool = False
    """Whiten the sequence rewards of each rollout batch (mean 0, std 1) before adding the KL penalty
    (the authors' TRL run scaled and normalised scores by running statistics)."""
    generation: GenerationConfig = dataclasses.field(
        default_factory=lambda: GenerationConfig(max_new_tokens=32, do_sample=True, batch_size=16))
    """Rollout decoding (sampling; top_p < 1 samples from a truncated pi, as the authors' top_p 0.95)."""
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(learning_rate=1.0e-4, batch_size=8, micro_batch_size=4))
    """Optimiser, schedule and batching: batch_size = rollouts per optimizer step (a minibatch);
    eval_every counts PPO steps; checkpoint_every must be 0 (PPO runs do not resume yet)."""


@dataclasses.dataclass
class TRLOnlineConfig:
    """`finetune.grpo:` / `finetune.rloo:` the settings alol passes to TRL's GRPOConfig / RLOOConfig
    (everything else keeps TRL's defaults). Defaults sized for the default task on 2 CPU cores."""

    steps: int = 8
    """Optimizer steps (TRL's max_steps)."""
    num_generations: int = 4
    """Sampled replies per prompt (the group whose rewards give each reply's baseline)."""
    beta: float = 0.0
    """KL coefficient against pi_ref (GRPO: TRL's default 0.0, no reference pass; RLOO: TRL's 0.05)."""
    epsilon: float = 0.2
    """Clip range of the importance ratio."""
    num_iterations: int = 1
    """Optimisation passes per batch of generations (TRL's mu)."""
    generation: GenerationConfig = dataclasses.field(
        default_factory=lambda: GenerationConfig(max_new_tokens=32, do_sample=True))
    """Sampling: max_new_tokens, temperature, top_p, repetition_penalty (stop_strings: applied to the text
    the reward sees; TRL trains on the tokens up to EOS or max_new_tokens)."""
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(learning_rate=1.0e-4, batch_size=16, micro_batch_size=8))
    """Optimiser and batching: batch_size = replies per optimizer step over all processes (prompts x
    num_generations), micro_batch_size = replies per forward (TRL's per_device_train_batch_size)."""


@dataclasses.dataclass
class FinetuneConfig:
    """`finetune:` the algorithm's settings (the algorithm itself is the top-level `algorithm`)."""

    ppo_clip: float = 0.2
    """eps: importance ratios are clamped to [1 - eps, 1 + eps] (reference: 0.2 small tasks, 0.9 HH)."""
    kl_beta: float = 0.1
    """beta of a_lol_kl's KL term (must be > 0 for a_lol_kl)."""
    sampling_strategy: str = "auto"
    """auto (by algorithm: A-LoL -> good_priority, wbc/r_gold/r_lol -> reward_priority, else uniform),
    uniform, good_priority, all_priority or reward_priority."""
    dpo_beta: float = 0.1
    """DPO's beta."""
    pro_sft_weight: float = 0.05
    """PRO's weight of the NLL term on the best candidate."""
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(learning_rate=1.0e-4, batch_size=8, micro_batch_size=4))
    """Optimiser, schedule and batching (train.eval_every turns periodic validation on)."""
    validation_rows: int = 64
    """Validation prompts scored at each evaluation (with train.eval_every > 0)."""
    validation_metric: str = "reward"
    """The mean validation column that picks the best weights: `reward` (the weighted sum) or one
    component's `reward_<name>` (the paper: FaithCritic's for wow and faithdial_wow, the critic's for comet)."""
    validation_generation: GenerationConfig = dataclasses.field(
        default_factory=lambda: GenerationConfig(max_new_tokens=32))
    """Decoding of the validation replies."""
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    """algorithm: ppo (online, alol's loop; its own optimiser settings in ppo.train)."""
    grpo: TRLOnlineConfig = dataclasses.field(default_factory=TRLOnlineConfig)
    """algorithm: grpo (online, TRL's GRPOTrainer)."""
    rloo: TRLOnlineConfig = dataclasses.field(default_factory=lambda: TRLOnlineConfig(beta=0.05))
    """algorithm: rloo (online, TRL's RLOOTrainer; beta: TRL's default 0.05)."""


def check_algorithm(algorithm: str, cfg: FinetuneConfig) -> str:
    """Validate the combination; return the sampling strategy to use."""
    if algorithm not in losses.ALGORITHMS:
        raise AlolError(f"unknown algorithm {algorithm!r}; valid: {', '.join(losses.ALGORITHMS)}.")
    spec = losses.ALGORITHMS[algorithm]
    if algorithm == "a_lol_kl" and cfg.kl_beta <= 0:
        raise AlolError(f"a_lol_kl needs finetune.kl_beta > 0 (got {cfg.kl_beta}); with 0 it is a_lol_ref_free.")
    if spec.clipped and cfg.ppo_clip <= 0:
        raise AlolError(f"{algorithm} needs finetune.ppo_clip > 0 (got {cfg.ppo_clip}): with 0 every ratio is "
                        "clamped to exactly 1. Use a_lol_ref_free for a ratio-free run.")
    strategy = spec.strategy if cfg.sampling_strategy == "auto" else cfg.sampling_strategy
    if strategy not in spec.strategies:
        # a plan drawn for another signal (or the pairs' rows for an offline loss) trains on the wrong rows
        raise AlolError(f"finetune.sampling_strategy {strategy!r} does not fit {algorithm}; valid: auto "
                        f"({spec.strategy}), {', '.join(spec.strategies)}.")
    return strategy


def validation_interval(eval_every: int, step_scale: float) -> int:
    """Steps between validations: finetune.train.eval_every scaled like the run's step count (the
    authors' A-LoL runs: 9000 x positive fraction steps, validation every 900 x positive fraction),
    so every strategy validates about as often per run. 0 stays 0 (off)."""
    return max(1, round(eval_every * step_scale)) if eval_every > 0 else 0


def offline_loss_fn(algorithm: str, cfg: FinetuneConfig):
    """loss_fn(model, batch) -> (per-example loss, stats) for the training loop."""
    spec = losses.ALGORITHMS[algorithm]

    def loss_fn(model, batch):
        logps = completion_logps(model, batch)
        mask = batch["completion_mask"]
        per_example = spec.loss(logps=logps, mask=mask, reward=batch.get("reward"), advantage=batch.get("advantage"),
                           ref_logps=batch.get("ref_token_logps"), ppo_clip=cfg.ppo_clip, kl_beta=cfg.kl_beta)
        stats = losses.offline_stats(logps, mask, batch.get("ref_token_logps"), batch.get("advantage"),
                                     cfg.ppo_clip if spec.clipped else None)
        return per_example, stats

    return loss_fn


def preference_loss_fn(algorithm: str, cfg: FinetuneConfig, candidates: int):
    """Rows are `candidates` sequences each, best first (dpo: chosen, rejected)."""

    def loss_fn(model, batch):
        logps = completion_logps(model, batch)
        mask = batch["completion_mask"]
        seq = (logps * mask).sum(-1).view(-1, candidates)
        if algorithm in ("dpo", "dpo_ref_free"):
            ref = (batch["ref_chosen_logp"], batch["ref_rejected_logp"]) if algorithm == "dpo" else (None, None)
            per_example = losses.dpo(seq[:, 0], seq[:, 1], *ref, beta=cfg.dpo_beta)
            margin = seq[:, 0] - seq[:, 1]
            return per_example, {"logps/margin": margin.mean().item(), "logps/chosen": seq[:, 0].mean().item(),
                                 "logps/rejected": seq[:, 1].mean().item()}
        scores = seq / mask.sum(-1).view(-1, candidates)  # length-normalised
        rewards = torch.stack([batch[f"reward_{k}"] for k in range(candidates)], dim=1)  # raw scores (logits)
        per_example = losses.pro(scores, rewards, -seq[:, 0], sft_weight=cfg.pro_sft_weight)
        return per_example, {"logps/best": seq[:, 0].mean().item()}

    return loss_fn


def offline_rows(frame, tokenizer, algorithm: str, max_prompt_tokens: int, max_completion_tokens: int, source: str):
    """One sequence per row, and the precomputed columns the algorithm's loss reads."""
    from alol.models.logprobs import encode

    examples = encode(tokenizer, frame["prompt"].to_list(), frame["completion"].to_list(), max_prompt_tokens,
                      max_completion_tokens)
    extras = {column: frame[column].to_list() for column in losses.ALGORITHMS[algorithm].reads}
    if "ref_token_logps" in extras:
        bad = [i for i, (e, r) in enumerate(zip(examples, extras["ref_token_logps"])) if len(e.completion_ids) != len(r)]
        if bad:
            raise AlolError(f"{source} row {bad[0]}: ref_token_logps has a different length than the completion's "
                            "tokens; base.max_completion_tokens changed since the advantages stage ran. Rerun it "
                            "(dvc repro).")
    return [[e] for e in examples], extras


def preference_rows(pairs, tokenizer, max_prompt_tokens: int, max_completion_tokens: int):
    """(chosen, rejected) sequences per row, with the reference log-probs and the raw reward scores
    of both (PRO's temperature: a reward model's logit, not its sigmoid)."""
    from alol.models.logprobs import encode

    prompts = pairs["prompt"].to_list()
    chosen = encode(tokenizer, prompts, pairs["chosen"].to_list(), max_prompt_tokens, max_completion_tokens)
    rejected = encode(tokenizer, prompts, pairs["rejected"].to_list(), max_prompt_tokens, max_completion_tokens)
    extras = {"ref_chosen_logp": pairs["ref_chosen_logp"].to_list(),
              "ref_rejected_logp": pairs["ref_rejected_logp"].to_list(),
              "reward_0": pairs["chosen_raw_reward"].to_list(), "reward_1": pairs["rejected_raw_reward"].to_list()}
    return [[c, r] for c, r in zip(chosen, rejected)], extras


def make_validator(reward, tokenizer, validation, cfg: FinetuneConfig, max_prompt_tokens: int, seed: int):
    """validate(model) -> mean `validation_metric` of its replies to the first `validation_rows` prompts."""
    import numpy as np
    import polars as pl

    from alol.rewards.annotate import reward_inputs
    from alol.models.generate import generate

    frame = validation.head(cfg.validation_rows)
    if cfg.validation_metric not in reward.columns:
        raise AlolError(f"finetune.validation_metric {cfg.validation_metric!r} is not a reward column; valid: "
                        f"{', '.join(reward.columns)}.")

    def validate(model) -> float:
        replies, _ = generate(model, tokenizer, frame["prompt"].to_list(), cfg.validation_generation,
                              max_prompt_tokens, seed)
        scores = reward(reward_inputs(frame, "validation", completions=replies), source="validation replies",
                        row_ids=frame["prompt_id"].to_list())
        return float(np.mean(scores[cfg.validation_metric]))

    return validate

