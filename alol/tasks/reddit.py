"""Reddit comments with up/down-vote scores (the paper's reddit_pos / reddit_neg), as canonical rows.

The Kaggle set "Reddit comment scores NLP" (danofer): comments_positive.csv and comments_negative.csv,
columns id, parent_id, subreddit_id, link_id, text, score, ups, author, controversiality,
parent_link_id, parent_text, parent_score, parent_ups, parent_author, parent_controversiality.
Every "negative" comment was downvoted.

The authors' preprocessing, per file (spec tasks.md section 1a):
1. drop rows whose parent_text or text is missing (pandas' NaN: an empty field or one of pandas'
   default NA strings such as "NA", "null", "nan", "None");
2. sample `sample_rows` rows (102,000) in pandas' order for `random_state=901`;
3. collapse whitespace; 4. skip a pair whose parent or comment has more than 100 words;
5. replace URLs with `<URL>`; 6. skip a pair whose tokenization of
   `parent<|endoftext|>comment<|endoftext|>` (the policy's tokenizer: DialoGPT's) exceeds 300 tokens;
then, in sampled order, the first 1,000 pairs of each file are test, the next 1,000 validation, the
rest train. Validation and test are joint (pos then neg); train is one side (`clean.train`).

A row: prompt_id, group_id (the parent comment id), prompt = parent + EOS, completion = the comment,
context = the parent, split_name (pos / neg: evaluate reports each), score, parent_score.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from alol.core.errors import AlolError
from alol.core.fetch import DownloadConfig, fetch_policy, local_source, sha256_of
from alol.tasks.base import Task

FILES = {"pos": "comments_positive.csv", "neg": "comments_negative.csv"}
# pandas.read_csv's default NA strings (pandas 2.x): such a field is NaN, so the authors' dropna drops it
PANDAS_NA = {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
             "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
URL = re.compile(r"(?:https?://|ftp://|www\.)\S+", re.IGNORECASE)
REQUIRED = ("parent_text", "text")


@dataclasses.dataclass
class RedditCleanConfig:
    """`clean:` for the Reddit task (reddit_pos / reddit_neg)."""

    train: Literal["pos", "neg"] = "pos"
    """Which train file the policy learns from: pos (reddit_pos, upvoted comments) or neg (reddit_neg,
    downvoted). Validation and test are the same joint pos + neg sets either way."""
    sample_rows: int = 102000
    """Rows sampled per file after dropping missing text (the authors': 102,000, random_state 901)."""
    sample_seed: int = 901
    """pandas' random_state of that sample (numpy RandomState(seed).permutation order)."""
    max_words: int = 100
    """Skip a pair whose parent or comment has more words than this (whitespace tokens)."""
    max_tokens: int = 300
    """Skip a pair whose `parent EOS comment EOS` is longer than this in the policy's tokens."""
    eos_text: str = "<|endoftext|>"
    """The separator after the parent in the prompt (DialoGPT's EOS, as in the authors' data)."""
    test_rows: int = 1000
    """Per file, the first this many kept pairs are test..."""
    validation_rows: int = 1000
    """...and the next this many validation; the rest is train."""
    max_rows: dict[str, int] = dataclasses.field(default_factory=lambda: {"train": 0, "validation": 0, "test": 0})
    """First this many rows per split after the split (0: all); validation and test keep pos and neg
    in equal parts."""


def collapse(text: str) -> str:
    return " ".join(text.split())


def replace_urls(text: str) -> str:
    return URL.sub("<URL>", text)


def read_csv(path: Path) -> list[dict]:
    """Every row of a Kaggle CSV as a dict of strings (quoted fields may span lines)."""
    if not path.exists():
        raise AlolError(f"{path}: missing. The Reddit task reads the Kaggle set's comments_positive.csv and "
                        "comments_negative.csv (download.source: the folder or zip that holds them).")
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise AlolError(f"{path}: no column(s) {missing}; its header is {reader.fieldnames}.")
        return list(reader)


def pandas_sample_order(n_rows: int, n: int, seed: int) -> np.ndarray:
    """The row positions of `DataFrame.sample(n, random_state=seed)`: pandas draws
    RandomState(seed).choice(n_rows, n, replace=False), i.e. the first n of permutation(n_rows).
    A file with fewer rows is taken whole, in permutation order (pandas would refuse)."""
    return np.random.RandomState(seed).permutation(n_rows)[:min(n, n_rows)]


def filter_side(rows: list[dict], side: str, tokenizer, cfg: RedditCleanConfig) -> tuple[list[dict], Counter]:
    """The authors' steps 1-6 on one file; returns the kept pairs in sampled order and the drop counts."""
    dropped = Counter()
    present = [r for r in rows if all(r.get(c) is not None and r[c] not in PANDAS_NA for c in REQUIRED)]
    dropped["missing_text"] = len(rows) - len(present)
    sampled = [present[i] for i in pandas_sample_order(len(present), cfg.sample_rows, cfg.sample_seed)]
    dropped["not_sampled"] = len(present) - len(sampled)
    kept = []
    for row in sampled:
        parent, comment = collapse(row["parent_text"]), collapse(row["text"])
        if len(parent.split()) > cfg.max_words or len(comment.split()) > cfg.max_words:
            dropped["over_max_words"] += 1
            continue
        parent, comment = replace_urls(parent), replace_urls(comment)
        thread = parent + cfg.eos_text + comment + cfg.eos_text
        if len(tokenizer(thread, add_special_tokens=False)["input_ids"]) > cfg.max_tokens:
            dropped["over_max_tokens"] += 1
            continue
        group = row.get("parent_id") or hashlib.sha1(parent.encode()).hexdigest()[:16]
        kept.append({"group_id": str(group), "prompt": parent + cfg.eos_text, "completion": comment,
                     "context": parent, "split_name": side, "score": _number(row.get("score")),
                     "parent_score": _number(row.get("parent_score"))})
    return kept, +dropped


def _number(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def load_reddit(root: Path) -> dict[str, list[dict]]:
    return {side: read_csv(root / name) for side, name in FILES.items()}


def clean_reddit(raw: dict[str, list[dict]], tokenizer,
                 cfg: RedditCleanConfig) -> tuple[dict[str, pl.DataFrame], dict, pl.DataFrame]:
    """The joint validation/test sets and the chosen side's train set, with drop counts per side; and
    both sides' train replies (pos + neg), which the authors fit the tf-idf diversity reward on."""
    kept, stats = {}, {"read": {s: len(r) for s, r in raw.items()}, "dropped": {}}
    for side, rows in raw.items():
        kept[side], dropped = filter_side(rows, side, tokenizer, cfg)
        stats["dropped"][side] = dict(dropped)
    cut = {side: {"test": rows[:cfg.test_rows],
                  "validation": rows[cfg.test_rows:cfg.test_rows + cfg.validation_rows],
                  "train": rows[cfg.test_rows + cfg.validation_rows:]} for side, rows in kept.items()}
    splits = {}
    for split in ("train", "validation", "test"):
        limit = cfg.max_rows.get(split, 0)
        if split == "train":
            rows = cut[cfg.train]["train"][:limit or None]
        else:  # pos then neg, as the authors join them; a limit keeps both sides in equal parts
            half = (limit + 1) // 2 if limit else None
            rows = cut["pos"][split][:half] + cut["neg"][split][:half]
            rows = rows[:limit or None]
        splits[split] = pl.DataFrame([{"prompt_id": f"{split}-{i}", **row} for i, row in enumerate(rows)],
                                     schema_overrides={"score": pl.Float64, "parent_score": pl.Float64})
    stats["rows"] = {s: f.height for s, f in splits.items()}
    stats["kept"] = {side: len(rows) for side, rows in kept.items()}
    stats["train_side"] = cfg.train
    stats["test_rows"] = dict(Counter(splits["test"]["split_name"].to_list())) if splits["test"].height else {}
    replies = pl.DataFrame({"completion": [r["completion"] for side in cut for r in cut[side]["train"]]},
                           schema={"completion": pl.String})
    return splits, stats, replies


def fetch(cfg: DownloadConfig, out: Path, work: Path) -> dict:
    """The user's Kaggle CSVs (a folder or a zip; no offline copy exists) into `out/reddit`, and the policy
    (a hub id or folder: the authors' microsoft/DialoGPT-medium) into `out/policy`; reward models are hub
    ids / folders used in place."""
    if not cfg.source:
        raise AlolError("download.source is required for the reddit task: the folder or zip holding "
                        f"{' and '.join(FILES.values())} (Kaggle: danofer/reddit-comments-scores-nlp).")
    source = local_source(cfg.source, work)
    manifest = {"reddit": {"source": cfg.source}}
    for name in FILES.values():
        found = sorted(source.rglob(name), key=lambda p: len(p.parts))
        if not found:
            raise AlolError(f"download.source={cfg.source}: has no {name} (the Kaggle set's two CSVs are needed).")
        (out / "reddit").mkdir(parents=True, exist_ok=True)
        shutil.copy2(found[0], out / "reddit" / name)
        manifest["reddit"][name] = sha256_of(found[0])
    return {**manifest, "policy": fetch_policy(cfg, out, work)}


def build(assets: Path, cfg: RedditCleanConfig, base) -> tuple[dict[str, pl.DataFrame], dict, dict]:
    """The clean stage: the two CSVs as canonical tables, and `train_replies` (both sides' train replies,
    which the tf-idf diversity reward is fit on)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets / "policy")
    splits, stats, replies = clean_reddit(load_reddit(assets / "reddit"), tokenizer, cfg)
    return splits, stats, {"train_replies": replies}


TASK = Task(
    name="reddit", config=RedditCleanConfig, fetch=fetch, build=build,
    optional_columns={"split_name": pl.String, "score": pl.Float64, "parent_score": pl.Float64},
    asset_deps=("policy", "reddit"),
    extra_tables=("train_replies",),
    reads_base=False,  # its limits are the authors', in `clean:`
    disjoint_groups=False,  # the authors split each file by position, so one parent comment may be in two
)
