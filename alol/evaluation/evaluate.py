"""Evaluate a policy on the test prompts: generate, score with the task reward, compare.

One function serves the reference's own stage (evaluated once, cached) and every fine-tuned
policy (paired with the reference's replies through `baseline`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from alol.rewards import evaluation_reward_configs
from alol.rewards.annotate import load_reward, reward_inputs
from alol.core.errors import AlolError
from alol.models.generate import GenerationConfig, generate
from alol.evaluation.replies import generate_and_score
from alol.evaluation.metrics import (TRAINING_PREFIX, grounding_stats, is_reward_column, kl_estimate, paired_comparison,
                                     reward_columns, reward_means, text_stats)
from alol.models.load import ModelConfig, load_tokenizer
from alol.core.params import BaseConfig, section
from alol.training.reference import load_frozen
from alol.models.logprobs import encode, forward_rows


@dataclasses.dataclass
class EvaluateConfig:
    """`evaluate:` how test replies are generated and compared."""

    generation: GenerationConfig = dataclasses.field(default_factory=lambda: GenerationConfig(max_new_tokens=32))
    """Decoding of the test replies (greedy by default; beams, sampling, repetition penalty, stops)."""
    rows: int = 0
    """Evaluate on the first this many test prompts (0: all)."""
    bootstrap_resamples: int = 4000
    """Resamples of the paired bootstrap behind each 95% confidence interval."""
    kl_samples: int = 1
    """Replies sampled (temperature 1) per test prompt for the KL(policy || reference) estimate, next to
    the greedy replies that are scored (0: no KL)."""
    prompt_format: str | None = None
    """null: the table's prompt. hh / plain: re-render from the dialogue turns (HH), e.g. plain
    ('\nHuman: ...\nAssistant: ') for models trained on Anthropic's format such as PPO baselines."""
    rewards: dict[str, Any] | None = None
    """null: score the test replies with the training reward (`rewards:`). Or a reward of its own, in the
    format of `rewards:` (e.g. a judge the policy never trained on): it gives `reward` and `reward_<name>`,
    fit by annotate where a component fits, and the training reward is reported beside it as
    `train_reward` (paired gains included), so a reward that was gamed in training shows."""

    def __post_init__(self):
        if self.rewards is not None:
            from alol.rewards import configs_of

            configs_of(self.rewards, "evaluate.rewards")  # an unknown type or setting fails the params check


def evaluate_policy(params: dict, base: BaseConfig, cfg: EvaluateConfig, policy: Path, test: pl.DataFrame,
                    annotated: Path, assets: Path, reference: Path | None = None,
                    baseline: pl.DataFrame | None = None) -> tuple[pl.DataFrame, dict]:
    """(generations table, metrics) for `policy` on the `test` prompts."""
    from alol.tasks import TASKS

    task = TASKS[params["task"]]  # which optional columns the test table has
    if cfg.rows:
        test = test.head(cfg.rows)
    if cfg.prompt_format:
        if not task.provides("turns"):
            raise AlolError(f"evaluate.prompt_format re-renders prompts from dialogue turns; task {task.name}'s "
                            "tables have no `turns` column (set it to null).")
        from alol.tasks.hh import render_prompt

        test = test.with_columns(pl.Series("prompt", [render_prompt(t, cfg.prompt_format) for t in test["turns"]]))
    model_cfg = section(params, "model", ModelConfig)
    tokenizer = load_tokenizer(policy)
    model = load_frozen(policy, model_cfg)
    prompts = test["prompt"].to_list()
    reward = load_reward(params, assets, annotated, evaluation=True)
    # evaluate.rewards set: the training reward scores the same replies too (a gamed reward shows as a gap)
    training = load_reward(params, assets, annotated) if evaluation_reward_configs(params) is not None else None
    scored = generate_and_score(model, tokenizer, test, reward, cfg.generation,
                                base.max_prompt_tokens, base.seed, "test", f"{policy} test replies")
    replies, scores = scored.replies, scored.scores
    if training is not None:
        scores.update(training_columns(training(reward_inputs(test, "test", completions=replies),
                                                source=f"{policy} test replies", row_ids=test["prompt_id"].to_list(),
                                                description="scoring with the training reward")))
    # log-probs of the replies (EOS included) under the policy
    max_reply = max(base.max_completion_tokens, cfg.generation.max_new_tokens + 1)
    examples = encode(tokenizer, prompts, replies, base.max_prompt_tokens, max_reply)
    policy_logps, _ = forward_rows(model, examples, tokenizer.pad_token_id, want_states=False)
    generations = test.select("prompt_id", "prompt").with_columns(
        pl.Series("completion", replies), *(pl.Series(k, v, dtype=pl.Float64) for k, v in scores.items()),
        pl.Series("tokens", [len(e.completion_ids) for e in examples]),
        pl.Series("logp", [float(np.sum(t)) for t in policy_logps]))
    stats = {**reward_means(scores), **text_stats(replies, generations["tokens"].to_numpy())}
    if reference is not None and cfg.kl_samples:  # KL(pi || pi_ref) needs replies sampled from pi
        sampling = GenerationConfig(max_new_tokens=cfg.generation.max_new_tokens, do_sample=True,
                                    stop_strings=cfg.generation.stop_strings, batch_size=cfg.generation.batch_size)
        sampled_prompts = prompts * cfg.kl_samples
        samples, _ = generate(model, tokenizer, sampled_prompts, sampling, base.max_prompt_tokens, base.seed + 1,
                              description="sampling for the KL")
        sampled = encode(tokenizer, sampled_prompts, samples, base.max_prompt_tokens, max_reply)
        sample_logps, _ = forward_rows(model, sampled, tokenizer.pad_token_id, want_states=False)
    del model
    if reference is not None and cfg.kl_samples:
        ref_model = load_frozen(reference, model_cfg)
        ref_logps, _ = forward_rows(ref_model, sampled, tokenizer.pad_token_id, want_states=False)
        stats.update(kl_estimate(sample_logps, ref_logps))
    gold_tokens = [len(ids) + 1 for ids in tokenizer(test["completion"].to_list(), add_special_tokens=False)["input_ids"]]
    # (gold replies are counted whole, EOS included: they are not cut, unlike trained-on completions)
    gold = reward_inputs(test, "test")
    gold_rewards = {c: test[c].to_numpy() for c in reward_columns(test)}  # annotate scored them
    if training is not None:  # annotate scored them with the training reward; evaluation's scores them here
        gold_rewards = {**reward(gold, source="the test replies", row_ids=test["prompt_id"].to_list(),
                                 description="scoring the test replies"), **training_columns(gold_rewards)}
        gold_rewards = {c: v for c, v in gold_rewards.items() if is_reward_column(c)}
    metrics = {"rows": test.height, "generated_tokens_per_second": scored.generated_tokens / scored.seconds,
               "scored_by": reward.describe(), **({"trained_on": training.describe()} if training else {}),
               "generations": stats, "gold": {**reward_means(gold_rewards),
                                               **text_stats(test["completion"].to_list(), gold_tokens)}}
    agreement = {**(training.agreement(gold) if training else {}), **reward.agreement(gold)}
    if agreement:  # a learned stand-in scored the replies: how well it agrees with the data's own test scores
        metrics["stand_in_agreement"] = agreement
    if baseline is not None:
        metrics["vs_baseline"] = compare_with(generations, baseline, base.seed, cfg.bootstrap_resamples)
    if task.provides("knowledge"):  # WoW / FaithDial: how much of each reply is copied from its knowledge
        knowledge = test["knowledge"].to_list()
        metrics["generations"].update(grounding_stats(replies, knowledge))
        metrics["gold"].update(grounding_stats(test["completion"].to_list(), knowledge))
    if task.provides("split_name"):  # HH: the four test sets, each on its own
        generations = generations.with_columns(test["split_name"])
        metrics["splits"] = {}
        for (name,), part in generations.group_by("split_name", maintain_order=True):
            gold = test.filter(pl.col("split_name") == name)
            entry = {"rows": part.height, **reward_means({c: part[c].to_numpy() for c in reward_columns(part)}),
                     "gold_reward": float(gold["reward"].mean())}
            if baseline is not None:
                entry["vs_baseline"] = compare_with(part, baseline, base.seed, cfg.bootstrap_resamples,
                                                    subset=True)["reward"]
            metrics["splits"][name] = entry
    return generations, metrics


def training_columns(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The training reward's `reward` and `reward_<name>` scores as `train_reward` and `train_reward_<name>`."""
    return {TRAINING_PREFIX + c: v for c, v in scores.items() if is_reward_column(c)}


HEADLINE = ("reward", "gain", "gain_ci_low", "gain_ci_high", "win_rate", "kl", "distinct_2", "length_words")


def headline(metrics: dict) -> dict:
    """The few numbers `dvc exp show` carries per experiment (everything is in details.json): the
    test reward, its paired gain over the reference with the 95% CI and win rate, the KL from the
    reference, diversity and length. No timings: identical runs have identical metrics."""
    generations = metrics["generations"]
    gain = metrics.get("vs_baseline", {}).get("reward", {})
    values = {"reward": generations["reward"], "gain": gain.get("gain"), "gain_ci_low": gain.get("ci_low"),
              "gain_ci_high": gain.get("ci_high"), "win_rate": gain.get("win_rate"), "kl": generations.get("kl"),
              "distinct_2": generations["distinct_2"], "length_words": generations["length_words"]}
    out = {k: values[k] for k in HEADLINE if values[k] is not None}
    if "train_reward" in generations:  # evaluate.rewards: the training reward's test mean beside it
        out["train_reward"] = generations["train_reward"]
    for name, agreement in metrics.get("stand_in_agreement", {}).items():  # how far to trust a learned reward
        key = next(k for k in ("r2", "auc", "pairwise_accuracy") if k in agreement)
        out[f"{name}_stand_in_test_{key}"] = agreement[key]
    return out


def compare_with(generations: pl.DataFrame, baseline: pl.DataFrame, seed: int, resamples: int,
                 subset: bool = False) -> dict:
    """Paired comparison on the prompts both tables answered (joined by prompt_id)."""
    columns = [c for c in reward_columns(generations) if c in baseline.columns]
    joined = generations.select("prompt_id", *columns).join(
        baseline.select("prompt_id", *columns), on="prompt_id", suffix="__baseline")
    if joined.height < generations.height:
        raise AlolError(f"the baseline generations answer only {joined.height} of the {generations.height} test "
                        "prompts; evaluate both with the same test split and evaluate.rows (dvc repro).")
    return paired_comparison({c: joined[c].to_numpy() for c in columns},
                             {c: joined[f"{c}__baseline"].to_numpy() for c in columns}, seed, resamples)
