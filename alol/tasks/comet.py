"""COMET on ATOMIC-10x (West et al.'s symbolic knowledge distillation), as canonical rows.

Source folder (download.source, copied to data/assets/comet/): the SKD tarball's
`downloaded/ATOMIC10X.jsonl`, one triple per line:
    {"head": "PersonX goes to the mall", "relation": "xWant", "tail": "to buy clothes",
     "split": "train" | "val" | "test", "p_valid_model": 0.93, "rec_0.5": ..., ...}
and optionally ATOMIC-2020's `test.tsv` (head <TAB> relation <TAB> tail, no header).

Only the seven SKD relations are kept. The prompt is
`<head> {head} </head> <relation> {relation} </relation> [GEN] ` and the reply the tail. The data
replies' reward is `p_valid_model`, stored as `stored_score` (the comet_critic reward uses it for
train and validation rows; test rows and every generated reply are scored by the critic).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from alol.core.errors import AlolError
from alol.core.fetch import DownloadConfig, copy_source
from alol.tasks.base import Task

RELATIONS = ("HinderedBy", "xNeed", "xWant", "xIntent", "xReact", "xAttr", "xEffect")
SPLIT_NAMES = {"train": "train", "val": "validation", "dev": "validation", "valid": "validation", "test": "test"}


@dataclasses.dataclass
class CometCleanConfig:
    """`clean:` for COMET on ATOMIC-10x (task: comet)."""

    test_source: Literal["atomic10x", "atomic2020"] = "atomic10x"
    """atomic10x: ATOMIC10X.jsonl's own test split (reward p_valid_model); atomic2020: ATOMIC-2020's
    test.tsv, one row per unique (head, relation) with its first listed tail as the gold reply (all its
    tails in `references`; scored by the critic)."""
    max_rows: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"train": 0, "validation": 10000, "test": 0})
    """Rows per split (0: all): a seeded random subset. The authors subsample validation to 10,000."""


def render_prompt(head: str, relation: str) -> str:
    return f"<head> {head} </head> <relation> {relation} </relation> [GEN] "


def read_atomic10x(path: Path) -> tuple[dict[str, list[dict]], Counter]:
    """Triples of the seven relations per split, and what was skipped (counted)."""
    out, skipped = {s: [] for s in ("train", "validation", "test")}, Counter()
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                item = json.loads(line)
                head, relation, tail = str(item["head"]), str(item["relation"]), str(item["tail"])
                split, score = item["split"], float(item["p_valid_model"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise AlolError(f"{where}: not an ATOMIC-10x triple ({err}); expected head, relation, tail, split, "
                                "p_valid_model.") from None
            if relation not in RELATIONS:
                skipped["other_relation"] += 1
                continue
            if split not in SPLIT_NAMES or not math.isfinite(score):
                raise AlolError(f"{where}: split {split!r} / p_valid_model {score!r}: expected train/val/test and "
                                "a finite number.")
            out[SPLIT_NAMES[split]].append({"head": head, "relation": relation, "tail": tail, "stored_score": score})
    return out, skipped


def read_atomic2020_test(path: Path) -> list[dict]:
    """One row per unique (head, relation) of the seven relations, in first-seen order, all tails kept."""
    groups: dict[tuple[str, str], list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                if line.strip():
                    raise AlolError(f"{path}:{line_no}: expected head<TAB>relation<TAB>tail.")
                continue
            head, relation, tail = parts[:3]
            if relation in RELATIONS and tail.strip() and tail.strip().lower() != "none":
                groups.setdefault((head, relation), []).append(tail.strip())
    return [{"head": h, "relation": r, "tail": tails[0], "references": tails, "stored_score": math.nan}
            for (h, r), tails in groups.items()]


def build_comet_splits(root: Path, cfg: CometCleanConfig, seed: int) -> tuple[dict[str, pl.DataFrame], dict]:
    path = root / "ATOMIC10X.jsonl"
    if not path.exists():
        found = sorted(root.rglob("ATOMIC10X.jsonl"))
        if not found:
            raise AlolError(f"{root}: no ATOMIC10X.jsonl; download.source must hold the SKD tarball's "
                            "downloaded/ATOMIC10X.jsonl (and ATOMIC-2020's test.tsv for test_source: atomic2020).")
        path = found[0]
    raw, skipped = read_atomic10x(path)
    if cfg.test_source == "atomic2020":
        tsv = next(iter(sorted(root.rglob("test.tsv"))), None)
        if tsv is None:
            raise AlolError(f"{root}: clean.test_source is atomic2020 but there is no test.tsv in download.source.")
        raw["test"] = read_atomic2020_test(tsv)
    rng = np.random.default_rng(seed)
    frames, stats = {}, {"read": {s: len(r) for s, r in raw.items()}, "dropped": dict(skipped), "rows": {},
                         "relations": {}}
    for split, rows in raw.items():
        limit = cfg.max_rows.get(split, 0)
        if limit and limit < len(rows):
            rows = [rows[i] for i in sorted(rng.choice(len(rows), size=limit, replace=False))]
        if not rows:
            raise AlolError(f"clean: the {split} split of {path} is empty.")
        frames[split] = pl.DataFrame([{
            "prompt_id": f"{split}-{i}", "group_id": f"{r['head']}", "prompt": render_prompt(r["head"], r["relation"]),
            "completion": r["tail"], "context": r["head"], "head": r["head"], "relation": r["relation"],
            "stored_score": r["stored_score"], "references": r.get("references", [r["tail"]])}
            for i, r in enumerate(rows)], schema_overrides={"stored_score": pl.Float64,
                                                             "references": pl.List(pl.String)})
        stats["rows"][split] = len(rows)
        stats["relations"][split] = dict(Counter(r["relation"] for r in rows))
    return frames, stats


def fetch(cfg: DownloadConfig, out: Path, work: Path) -> dict:
    """The user's ATOMIC files (download.source) into `out/comet`, the policy into `out/policy`; the critic
    is used in place."""
    return copy_source("comet", cfg, out, work,
                       "a folder holding the SKD tarball's ATOMIC10X.jsonl (and ATOMIC-2020's test.tsv).")


def build(assets: Path, cfg: CometCleanConfig, base) -> tuple[dict[str, pl.DataFrame], dict, dict]:
    """The clean stage: the ATOMIC triples as canonical tables (no tokenizer)."""
    splits, stats = build_comet_splits(assets / "comet", cfg, base.seed)
    return splits, stats, {}


TASK = Task(
    name="comet", config=CometCleanConfig, fetch=fetch, build=build,
    optional_columns={"head": pl.String, "relation": pl.String, "stored_score": pl.Float64,
                      "references": pl.List(pl.String)},
    asset_deps=("comet",),
    disjoint_groups=False,  # ATOMIC-10x's own splits (and ATOMIC-2020's test), kept as published
)
