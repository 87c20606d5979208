"""The cost of a learned stand-in (alol/rewards/column.py): fitting and selecting it on N (context, reply) rows
with the shipped MiniLM encoder, and scoring new replies with it against the relevance reward, per row (alone,
and beside relevance in one reward, where the two share MiniLM's embeddings; best of 5 interleaved rounds).

    python -m alol.tools.stand_in_bench --out results/bench/stand_in.json     # after `dvc repro download`

The rows are real: consecutive turns (context, reply) of the BYU Chit-Chat conversations that the download
stage writes (data/assets/chitchat/conversations.jsonl), train and validation by conversation. The score is
real too but only a cost stand-in: the reply's VADER compound (the positivity reward's raw value), so the
fit's quality printed here says nothing about any task. The matmul peak is measured in the same run (timings
on another machine compare as ratios to it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def turn_pairs(path: Path, rows: int, seed: int) -> list[tuple[str, str, str]]:
    """(conversation id, context, reply) of every consecutive turn pair, the conversations in a seeded order."""
    from alol.tools.scored_example import conversation_pairs

    out = []
    for pairs in conversation_pairs(path, np.random.default_rng(seed)):
        out += [(p["id"], p["prompt"], p["completion"]) for p in pairs]
        if len(out) >= rows:
            return out[:rows]
    raise SystemExit(f"{path}: only {len(out)} turn pairs; fewer than the {rows} asked for.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, default=Path("data/assets"))
    parser.add_argument("--rows", type=int, default=10_000, help="train rows the stand-in is fit on")
    parser.add_argument("--validation", type=int, default=1_000, help="validation rows it selects and reports on")
    parser.add_argument("--score-rows", type=int, default=1_000, help="new replies scored by each reward")
    parser.add_argument("--out", type=Path, default=Path("results/bench/stand_in.json"))
    args = parser.parse_args()

    import torch
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from alol.rewards import reward_config
    from alol.rewards.column import Column
    from alol.rewards.components import RewardInputs
    from alol.rewards.relevance import Relevance
    from alol.tools.bench import matmul_flops

    peak = matmul_flops()
    pairs = turn_pairs(args.assets / "chitchat" / "conversations.jsonl", args.rows + args.validation + args.score_rows, 0)
    vader = SentimentIntensityAnalyzer()

    def inputs(part, candidate=0):
        return RewardInputs([c for _, c, _ in part], [r for _, _, r in part], [c for _, c, _ in part],
                            columns={"score": [vader.polarity_scores(r)["compound"] for _, _, r in part],
                                     "group_id": [g for g, _, _ in part]}, candidate=candidate)

    train, held = inputs(pairs[:args.rows]), inputs(pairs[args.rows:args.rows + args.validation])
    new = inputs(pairs[args.rows + args.validation:], candidate=None)
    component = Column(reward_config("score", {"type": "column", "column": "score", "stand_in": {}}), args.assets,
                       "stand_in_bench: rewards.score")
    start = time.perf_counter()
    component.fit(train, held)
    fit_seconds = time.perf_counter() - start
    relevance = Relevance(args.assets)
    encoder = relevance.encoder  # the one MiniLM both read (alol.rewards.relevance.sentence_encoder)
    assert component.encoder is encoder

    def seconds(*scorers) -> float:
        """One run of the last scorer, with no embedding kept from an earlier run (the scorers before it run
        first, untimed, as the reward's other components would)."""
        encoder._recent.clear()
        for scorer in scorers[:-1]:
            scorer(new)
        start = time.perf_counter()
        scorers[-1](new)
        return time.perf_counter() - start

    # the best of 5 interleaved rounds: a drift in the machine's speed hits the three alike
    runs = {"stand_in": (component.score,), "relevance": (relevance.score,),
            "beside": (relevance.score, component.score)}
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(5):
        for name, scorers in runs.items():
            best[name] = min(best[name], seconds(*scorers))
    stand_in_seconds, relevance_seconds, beside_seconds = best["stand_in"], best["relevance"], best["beside"]
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
        "matmul_peak_gflops": peak / 1e9, "train_rows": args.rows, "validation_rows": args.validation,
        "fit_and_select_seconds": fit_seconds, "l2_strengths": len(component.stand_in.l2),
        "chosen_l2": component.report["l2"], "report_on_validation": component.report["report"],
        "scored_rows": len(new), "stand_in_seconds_per_row": stand_in_seconds / len(new),
        "relevance_seconds_per_row": relevance_seconds / len(new),
        "stand_in_over_relevance": stand_in_seconds / relevance_seconds,
        "stand_in_beside_relevance_seconds_per_row": beside_seconds / len(new),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
