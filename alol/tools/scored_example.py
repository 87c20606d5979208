"""A pre-scored dataset for the `column` reward's end-to-end run: BYU Chit-Chat turn pairs, each reply with a
`score` column, written as prompt/completion JSONL.

    python -m alol.tools.scored_example --out /tmp/scored/chitchat_scored.jsonl    # after `dvc repro download`
    alol init /tmp/scored/run --data /tmp/scored/chitchat_scored.jsonl --columns group=id --score score
    cd /tmp/scored/run && dvc repro

CIRCULAR, and labelled so wherever it is used: no PyPI package ships dialogue replies with per-reply human
scores (shared spec, tasks.md), so the score is the default reward's safety + positivity + relevance, computed
once here on the data's own replies. A pipeline trained on this column and evaluated by its learned stand-in is
therefore judged by a model of the very reward the column came from; re-scoring its test replies with those
three components (`rescore`) is a check of the stand-in, not an independent judgement.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SOURCE_COMPONENTS = ("safety", "positivity", "relevance")


def conversation_pairs(path: Path, rng: np.random.Generator) -> Iterator[list[dict]]:
    """Each conversation of the messages file, in an order drawn from `rng`, as its consecutive non-empty turn
    pairs {"id", "prompt", "completion"} (the reply and the turn before it)."""
    conversations = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i in rng.permutation(len(conversations)):
        messages = conversations[i]["messages"]
        yield [{"id": conversations[i]["id"], "prompt": a["content"], "completion": b["content"]}
               for a, b in zip(messages, messages[1:]) if a["content"].strip() and b["content"].strip()]


def turn_pairs(path: Path, conversations: int, per_conversation: int, seed: int) -> list[dict]:
    """`per_conversation` pairs drawn from each of `conversations` conversations, in their order."""
    rng = np.random.default_rng(seed)
    out = []
    for pairs in itertools.islice(conversation_pairs(path, rng), conversations):
        out += [pairs[j] for j in sorted(rng.permutation(len(pairs))[:per_conversation])]
    return out


def source_reward(assets: Path):
    from alol.rewards import RewardFunction, reward_config

    return RewardFunction({name: reward_config(name, {}) for name in SOURCE_COMPONENTS}, assets, "scored_example")


def main() -> None:
    from alol.rewards.components import RewardInputs

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, default=Path("data/assets"))
    parser.add_argument("--conversations", type=int, default=1200)
    parser.add_argument("--per-conversation", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = turn_pairs(args.assets / "chitchat" / "conversations.jsonl", args.conversations, args.per_conversation,
                      args.seed)
    reward = source_reward(args.assets)
    scores = reward(RewardInputs([r["prompt"] for r in rows], [r["completion"] for r in rows],
                                 [r["prompt"] for r in rows]), description="scoring the replies once")["reward"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps({**r, "score": round(float(s), 6)}) + "\n" for r, s in zip(rows, scores)))
    print(f"wrote {len(rows)} rows to {args.out}: score = {' + '.join(SOURCE_COMPONENTS)} (mean {np.mean(scores):.3f}, "
          f"sd {np.std(scores):.3f})")


if __name__ == "__main__":
    main()
