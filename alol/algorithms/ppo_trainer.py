"""Online PPO (algorithm: ppo): rollouts from the current policy on the train prompts, scored with the
task's reward, trained with the clipped objective of alol.algorithms.ppo on the training loop's conventions.

    python stages/finetune.py ... (algorithm: ppo)     # the finetune stage calls `train` (the ppo family)
    torchrun --nproc_per_node 2 stages/finetune.py ... # data parallel, same result as 1 process

One PPO step: (1) sample one reply per prompt for `rollout_batch_size` train prompts (alol.models.generate,
blocks dealt to processes, every process gets every rollout); (2) score them with the task's
RewardFunction (the same objects as annotate and evaluate); (3) one pass without gradient for the
rollout policy's token log-probs and values and the reference's log-probs; (4) per-token rewards
(sequence reward on the last token, -beta KL on every token), GAE, whitened advantages; (5)
`ppo_epochs` passes over the rollouts in shuffled minibatches of `train.batch_size`, one optimizer
step each, the loss a token mean over the whole minibatch however it is split across processes and
micro-batches; (6) the adaptive KL controller's update.

The reference pi_ref shares the policy's weights: with LoRA on a reference that is itself an adapter
(the default task, HH), that adapter is loaded a second time, frozen, next to the trained copy (a few
MB; the base is shared); with LoRA on a full reference model, it is the base with the adapter
disabled. Only full fine-tuning keeps a second, frozen model in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import numpy as np
import torch

from alol.algorithms import ppo
from alol.algorithms.record import Algorithm, Family
from alol.algorithms.run import rollout_start
from alol.core.errors import AlolError
from alol.models.generate import GenerationConfig
from alol.models.padding import pad_left
from alol.models.logprobs import Example, collate, completion_logps, completion_logps_and_states, length_grouped
from alol.training.loop import TrainConfig, make_accelerator, make_optimizer
from alol.training.summary import first, last, summarize, total, weighted_mean
from alol.training.validation import Validation

REFERENCE_ADAPTER = "reference"


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


def check_ppo(cfg: PPOConfig, processes: int = 1) -> int:
    """Validate the settings; return the optimizer steps of the run."""
    from alol.training.loop import grad_accumulation

    if cfg.rollout_batch_size % cfg.train.batch_size:
        raise AlolError(f"finetune.ppo.rollout_batch_size {cfg.rollout_batch_size} must be a multiple of "
                        f"finetune.ppo.train.batch_size {cfg.train.batch_size} (rollouts per optimizer step).")
    grad_accumulation(cfg.train, processes)
    if cfg.train.checkpoint_every:
        raise AlolError("finetune.ppo.train.checkpoint_every: PPO runs do not checkpoint or resume yet; set it to 0.")
    if not cfg.generation.do_sample or cfg.generation.num_beams != 1:
        raise AlolError("finetune.ppo.generation: PPO samples its rollouts from the policy; set do_sample: true "
                        "and num_beams: 1.")
    if cfg.steps < 1 or cfg.ppo_epochs < 1 or cfg.cliprange <= 0:
        raise AlolError("finetune.ppo: steps and ppo_epochs must be >= 1 and cliprange > 0.")
    return cfg.steps * cfg.ppo_epochs * cfg.rollout_batch_size // cfg.train.batch_size


class PolicyWithValue(torch.nn.Module):
    """The policy and a value head (Linear on the last hidden state, fp32, zero-initialised so that
    V = 0 at the start), trained together; one module so that DDP averages both gradients."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = torch.nn.Linear(hidden, 1, device=next(policy.parameters()).device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, batch):
        """(B, K) token log-probs and values V(x, y_<t) at the completion positions (0 on padding)."""
        logps, hidden = completion_logps_and_states(self.policy, batch)
        values = self.value_head(hidden.float()).squeeze(-1)
        return logps, values * batch["completion_mask"]


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def attach_reference(policy, reference, cfg):
    """Make pi_ref available without a second model where possible (module docstring). Returns the
    frozen reference model for full fine-tuning, else None (reference_logps uses the policy's own)."""
    from alol.models.load import policy_paths

    if not is_peft(policy):
        from alol.training.reference import load_frozen

        return load_frozen(reference, cfg)
    _, adapter = policy_paths(reference)
    if adapter is not None:
        flags = {n: p.requires_grad for n, p in policy.named_parameters()}
        policy.load_adapter(str(adapter), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        for name, param in policy.named_parameters():
            param.requires_grad_(flags.get(name, False))
    return None


@contextlib.contextmanager
def reference_mode(policy):
    """Inside, `policy` computes pi_ref: the frozen reference adapter, or the base with the adapter off."""
    if REFERENCE_ADAPTER not in policy.peft_config:
        with policy.disable_adapter():
            yield
        return
    active = policy.active_adapter
    flags = {n: p.requires_grad for n, p in policy.named_parameters()}  # set_adapter changes them
    policy.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
    try:
        yield
    finally:
        policy.set_adapter(active)
        for name, param in policy.named_parameters():
            param.requires_grad_(flags[name])


def detach_reference(policy):
    """The policy alone, as save_policy writes it (the frozen reference adapter removed)."""
    if is_peft(policy) and REFERENCE_ADAPTER in policy.peft_config:
        policy.delete_adapter(REFERENCE_ADAPTER)
    return policy


@torch.no_grad()
def reference_logps(policy, ref_model, batch):
    """(B, K) log pi_ref(y_t) at the completion tokens."""
    if ref_model is not None:
        return completion_logps(ref_model, batch)
    with reference_mode(policy):
        return completion_logps(policy, batch)


def prompt_schedule(n_prompts: int, steps: int, per_step: int, seed: int) -> np.ndarray:
    """(steps, per_step) train-prompt indices: shuffled passes over the prompts, drawn once with a seed."""
    rng = np.random.default_rng(seed)
    passes = math.ceil(steps * per_step / n_prompts)
    return np.concatenate([rng.permutation(n_prompts) for _ in range(passes)])[:steps * per_step].reshape(steps, -1)


def score_rollouts(model: PolicyWithValue, ref_model, examples: list[Example], pad_id: int, micro_batch: int):
    """Per rollout: the rollout policy's token log-probs, its values, the reference's token log-probs.
    Blocks of similar length dealt to processes (alol.core.shard): the same numbers for any process count."""
    from alol.core.shard import map_blocks

    def block(_: int, idx: list[int]):
        batch = collate([examples[i] for i in idx], pad_id)
        batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
        with torch.no_grad():
            logps, values = model(batch)
        ref = reference_logps(model.policy, ref_model, batch)
        out = []
        for row, i in enumerate(idx):
            n = len(examples[i].completion_ids)
            out.append((logps[row, -n:].tolist(), values[row, -n:].tolist(), ref[row, -n:].tolist()))
        return out

    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    return map_blocks(block, order, micro_batch)


def rollout_targets(scores: np.ndarray, scored, cfg: PPOConfig, kl_coef: float):
    """Per rollout: whitened advantages and returns (lists over its tokens), and the batch statistics."""
    (logps, mask), (values, _), (ref, _) = (pad_left([s[j] for s in scored], 0.0, torch.float32) for j in range(3))
    mask = mask.float()
    seq_scores = torch.tensor(scores, dtype=torch.float32)
    if cfg.whiten_rewards:
        seq_scores = ppo.whiten(seq_scores, torch.ones_like(seq_scores))
    rewards = ppo.kl_penalized_rewards(seq_scores, logps, ref, mask, kl_coef)
    advantages, returns = ppo.gae(rewards, values, mask, cfg.gamma, cfg.lam)
    advantages = ppo.whiten(advantages, mask)
    lengths = [len(s[0]) for s in scored]
    per_row = lambda t: [t[i, t.shape[1] - n:].tolist() for i, n in enumerate(lengths)]  # noqa: E731
    kl = ((logps - ref) * mask).sum(-1)
    stats = {"kl": kl.mean().item(), "values/mean": ppo.masked_mean(values, mask).item(),
             "returns/mean": ppo.masked_mean(returns, mask).item()}
    return per_row(advantages), per_row(returns), stats


def train_ppo(policy, reference, model_cfg, tokenizer, frame, reward, cfg: PPOConfig, max_prompt_tokens: int,
              seed: int, log=None, validate=None):
    """Run PPO from `policy` (loaded from `reference`) on the prompts of `frame` (prompt, context, ...).
    `log(step, metrics)` on the main process only. Returns the trained policy, ready to save."""
    from alol.evaluation.replies import generate_and_score

    accelerator, accumulation = make_accelerator(cfg.train)
    total_steps = check_ppo(cfg, accelerator.num_processes)
    ref_model = attach_reference(policy, reference, model_cfg)
    torch.manual_seed(seed)
    model = PolicyWithValue(policy)
    optimizer, scheduler = make_optimizer(model, cfg.train, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    kl_ctl = ppo.KLController(cfg.init_kl_coef, cfg.target_kl, cfg.horizon)
    schedule = prompt_schedule(frame.height, cfg.steps, cfg.rollout_batch_size, seed)
    rng = np.random.default_rng(seed + 1)
    per_process = cfg.train.batch_size // accelerator.num_processes
    rank, main = accelerator.process_index, log is not None and accelerator.is_main_process
    pad = tokenizer.pad_token_id
    validation = Validation(validate, cfg.train.eval_every, cfg.steps, accelerator, log) if validate is not None \
        and cfg.train.eval_every else None
    if validation is not None:
        validation(0, unwrapped.policy, unwrapped)  # the policy's replies; the value head's weights kept too
    for step in range(cfg.steps):
        tic = time.perf_counter()
        rows = frame[schedule[step].tolist()]
        replies = generate_and_score(unwrapped.policy, tokenizer, rows, reward, cfg.generation, max_prompt_tokens,
                                     seed + 100_003 * (step + 1), "train", f"PPO step {step + 1} rollouts",
                                     description=None)
        rollouts, scores, rollout_seconds = replies.rollouts, replies.scores["reward"], replies.seconds
        examples = [Example(r.prompt_ids, r.completion_ids or [tokenizer.eos_token_id]) for r in rollouts]
        model.eval()
        scored = score_rollouts(unwrapped, ref_model, examples, pad, cfg.train.micro_batch_size)
        model.train()
        advantages, returns, batch_stats = rollout_targets(scores, scored, cfg, kl_ctl.value)
        extras = {"old_logps": [s[0] for s in scored], "old_values": [s[1] for s in scored],
                  "advantages": advantages, "returns": returns}
        lengths = [e.length for e in examples]
        update_tic, tokens, totals, grad_norm, updates = time.perf_counter(), 0, {}, 0.0, 0
        for _ in range(cfg.ppo_epochs):
            order = rng.permutation(len(examples))
            for start in range(0, len(order), cfg.train.batch_size):
                minibatch = [int(i) for i in order[start:start + cfg.train.batch_size]]
                minibatch_tokens = sum(len(examples[i].completion_ids) for i in minibatch)
                mine = minibatch[rank * per_process:(rank + 1) * per_process]
                for group in length_grouped(mine, lengths, cfg.train.micro_batch_size):
                    batch = collate([examples[i] for i in group], pad,
                                    {k: [v[i] for i in group] for k, v in extras.items()})
                    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                    mask = batch["completion_mask"]
                    with accelerator.accumulate(model):
                        logps, values = model(batch)
                        pg, pg_clip = ppo.policy_loss(logps, batch["old_logps"], batch["advantages"], mask,
                                                      cfg.cliprange)
                        vf, vf_clip = ppo.value_loss(values, batch["old_values"], batch["returns"], mask,
                                                     cfg.cliprange_value)
                        # token mean over the whole minibatch: this micro-batch's share of its tokens, times
                        # the accumulation and process counts that Accelerate's backward and DDP divide by
                        share = mask.sum().item() / minibatch_tokens
                        loss = pg + cfg.vf_coef * vf
                        accelerator.backward(loss * share * accumulation * accelerator.num_processes)
                        if accelerator.sync_gradients:
                            grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.train.max_grad_norm or math.inf))
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    approx_kl = ppo.masked_mean(0.5 * (logps.detach() - batch["old_logps"]) ** 2, mask)
                    weight = share / (cfg.ppo_epochs * len(order) / cfg.train.batch_size)
                    for key, value in {"loss": loss.item(), "policy_loss": pg.item(), "value_loss": vf.item(),
                                       "ratio/clip_fraction": pg_clip.item(), "values/clip_fraction": vf_clip.item(),
                                       "policy/approx_kl": approx_kl.item()}.items():
                        totals[key] = totals.get(key, 0.0) + value * weight
                    tokens += int(batch["attention_mask"].sum())
                updates += 1
        update_seconds = time.perf_counter() - update_tic
        names = sorted(totals)  # token-weighted shares: the sum over processes is the mean over the step
        sums = accelerator.reduce(torch.tensor([totals[k] for k in names], device=accelerator.device), "sum")
        tokens = int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device), "sum"))
        generated = sum(r.tokens for r in rollouts)
        kl_value = kl_ctl.value
        kl_ctl.update(batch_stats["kl"], len(examples))
        if main:
            log(step + 1, {**dict(zip(names, sums.tolist())), **batch_stats,
                           "rewards/mean": float(np.mean(scores)), "rewards/std": float(np.std(scores)),
                           "kl_coef": kl_value, "grad_norm": grad_norm, "learning_rate": scheduler.get_last_lr()[0],
                           "completion_length": generated / len(rollouts), "rollout_tokens": generated,
                           "rollout_seconds": rollout_seconds, "rollout_tokens_per_second": generated / rollout_seconds,
                           "tokens_per_second": tokens / update_seconds, "update_seconds": update_seconds,
                           "optimizer_steps": updates, "step_seconds": time.perf_counter() - tic})
        if validation is not None and validation.due(step + 1):
            validation(step + 1, unwrapped.policy, unwrapped)
    accelerator.wait_for_everyone()
    if validation is not None:
        validation.finish(unwrapped)
    return detach_reference(unwrapped.policy)


def summarize_ppo(history: list[dict]) -> dict:
    """Run-level metrics of a PPO run: reward first and last, the cost (generated tokens, rollout and
    training tokens/s, seconds)."""
    return summarize(history, "rewards/mean", optimizer_steps=total("optimizer_steps"),
                     first_reward=first("rewards/mean"), final_reward=last("rewards/mean"),
                     first_loss=first("loss"), final_loss=last("loss"), final_kl=last("kl"),
                     generated_tokens=lambda rows: int(total("rollout_tokens")(rows)),
                     rollout_tokens_per_second=lambda rows: total("rollout_tokens")(rows) / total("rollout_seconds")(rows),
                     tokens_per_second=weighted_mean("tokens_per_second", "update_seconds"),
                     rollout_seconds=total("rollout_seconds"), train_seconds=total("step_seconds"))


def train(run):
    """The ppo family: PPO from the reference on the train prompts, scored with the task's reward."""
    live = run.live()
    frame, reward, model = rollout_start(run)
    cfg = run.cfg.ppo
    validate = run.validator(reward) if cfg.train.eval_every else None
    model = train_ppo(model, run.reference, run.model_cfg, run.tokenizer, frame, reward, cfg,
                      run.base.max_prompt_tokens, run.base.seed, live, validate)
    if live is not None:
        live.close()
    return model, summarize_ppo(live.history if live else [])


PPO = Family("ppo", train)
# online: rollouts of the current policy on the train prompts (compare: their cost in generated tokens)
ALGORITHMS = (Algorithm("ppo", PPO, None, (), "online"),)
