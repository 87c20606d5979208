"""Helpful-Harmless (HH) data: PRO's files (the paper's) or Anthropic's raw HH-RLHF, as canonical rows.

PRO layout (data.zip of the PRO repository), JSON lines:
    hh_train_len2/train.json, hh_dev/sampled_dev.json,
    hh_test/{harmless_base,helpful_base,helpful_online,helpful_rejection}.json
    {"prefix": [[turn, ...], [turn, ...]], "suffix": [reply_0, reply_1], "reward": [logit_0, logit_1], ...}
with turns "<|prompter|>text" / "<|assistant|>text" and a bare final "<|assistant|>".

Anthropic layout: <subset>/{train,test}.jsonl.gz with {"chosen": transcript, "rejected": transcript},
transcripts "\\n\\nHuman: ...\\n\\nAssistant: ...". Converted to the same rows (no stored logits).

A canonical row: prompt_id, group_id (the dialogue), turns (the prefix), prompt (the policy's
text), completion (= candidate 0, the one A-LoL trains on), candidates, candidate_logits,
context (the last human turn), split_name.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import polars as pl

from alol.core.errors import AlolError
from alol.core.fetch import DownloadConfig, local_source
from alol.tasks.base import Task

HUMAN, ASSISTANT = "<|prompter|>", "<|assistant|>"
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions.\n")
TEST_SPLITS = ("harmless_base", "helpful_base", "helpful_online", "helpful_rejection")
PRO_FILES = {"train": ["hh_train_len2/train.json"], "validation": ["hh_dev/sampled_dev.json"],
             "test": [f"hh_test/{name}.json" for name in TEST_SPLITS]}


@dataclasses.dataclass
class HHCleanConfig:
    """`clean:` for the HH task."""

    drop_colon_endings: bool = True
    """The authors' cleaning of the train split: drop a pair if either reply ends with ':' (about 20K
    of 160K rows)."""
    drop_validation_in_test: bool = False
    """PRO's dev prompts are sampled from the test files (a leak the paper inherits); true removes them."""
    max_rows: dict[str, int] = dataclasses.field(default_factory=lambda: {"train": 0, "validation": 0, "test": 0})
    """First this many rows per split after cleaning (0: all)."""
    prompt_format: str = "hh"
    """hh: the system line + ' ### Human: ... ### Assistant:' (the paper's LLaMA prompt);
    plain: '\\nHuman: ...\\nAssistant: ' (e.g. PPO models trained on Anthropic's format)."""


def render_prompt(turns: list[str], prompt_format: str = "hh") -> str:
    """The policy's prompt from PRO turn strings (the last one the bare assistant tag)."""
    if prompt_format == "hh":
        joined = "".join(turns).replace(HUMAN, " ### Human: ").replace(ASSISTANT, " ### Assistant: ")
        return SYSTEM + joined.strip()  # ends with "### Assistant:"
    if prompt_format == "plain":
        out = "".join(("\nHuman: " + t[len(HUMAN):]) if t.startswith(HUMAN) else ("\nAssistant: " + t[len(ASSISTANT):])
                      for t in turns)
        return out.rstrip() + " "
    raise AlolError(f"unknown prompt_format {prompt_format!r}; valid: hh, plain.")


def reward_model_text(turns: list[str], reply: str, eos: str) -> str:
    """The OASST reward model's input: each turn (the reply appended to the final assistant tag)
    followed by the tokenizer's EOS."""
    full = turns[:-1] + [turns[-1] + reply]
    return "".join(t + eos for t in full)


def _row(prefix: list[str], suffix: list[str], logits: list[float] | None, split_name: str, where: str) -> dict:
    if not prefix or prefix[-1] != ASSISTANT:
        raise AlolError(f"{where}: the prefix must end with the bare '{ASSISTANT}' tag.")
    bad = [t for t in prefix if not (t.startswith(HUMAN) or t.startswith(ASSISTANT))]
    if bad:
        raise AlolError(f"{where}: turn {bad[0][:40]!r} starts with neither {HUMAN} nor {ASSISTANT}.")
    dialogue = json.dumps(prefix, ensure_ascii=False)
    humans = [t[len(HUMAN):] for t in prefix if t.startswith(HUMAN)]
    return {"group_id": hashlib.sha1(dialogue.encode()).hexdigest()[:16], "turns": prefix,
            "candidates": [str(s) for s in suffix],
            "candidate_logits": [float(x) for x in logits] if logits is not None else [math.nan] * len(suffix),
            "context": humans[-1] if humans else "", "split_name": split_name}


def read_pro_file(path: Path, split_name: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                item = json.loads(line)
                prefix, suffix, reward = item["prefix"][0], item["suffix"], item.get("reward")
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                raise AlolError(f"{where}: not a PRO row ({err}); expected JSON with prefix, suffix, reward.") from None
            if len(suffix) < 2 or (reward is not None and len(reward) != len(suffix)):
                raise AlolError(f"{where}: needs >= 2 suffixes and one reward per suffix.")
            rows.append(_row(prefix, suffix, reward, split_name, where))
    return rows


def parse_transcript(text: str, where: str) -> list[tuple[str, str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b...' -> [(human, a), (assistant, b), ...]."""
    turns = []
    for chunk in text.split("\n\nHuman: ")[1:]:
        human, *assistant = chunk.split("\n\nAssistant: ")
        turns.append(("human", human))
        turns += [("assistant", a) for a in assistant]
    if not turns or turns[-1][0] != "assistant":
        raise AlolError(f"{where}: a transcript must alternate '\\n\\nHuman: ' / '\\n\\nAssistant: ' and end with "
                        "an assistant turn.")
    return turns


def hh_rlhf_row(item: dict, split_name: str, where: str) -> dict:
    chosen, rejected = parse_transcript(item["chosen"], where), parse_transcript(item["rejected"], where)
    if chosen[:-1] != rejected[:-1]:
        raise AlolError(f"{where}: chosen and rejected differ before their last reply.")
    prefix = [(HUMAN if role == "human" else ASSISTANT) + text for role, text in chosen[:-1]] + [ASSISTANT]
    return _row(prefix, [chosen[-1][1], rejected[-1][1]], None, split_name, where)


def read_hh_rlhf(root: Path, split: str) -> list[dict]:
    """Every <subset>/<split>.jsonl.gz under `root` (subset folder names give split_name)."""
    rows = []
    for path in sorted(root.glob(f"*/{split}.jsonl.gz")):
        name = path.parent.name.replace("-", "_")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    rows.append(hh_rlhf_row(json.loads(line), name, f"{path}:{line_no}"))
    return rows


def load_hh(root: Path) -> dict[str, list[dict]]:
    """The raw rows per split from a folder in PRO's layout, or in Anthropic's (train/test only:
    validation is then empty, which the clean stage's table check refuses; nothing samples it yet)."""
    if (root / "hh_train_len2").is_dir():
        out = {}
        for split, files in PRO_FILES.items():
            out[split] = []
            for name in files:
                path = root / name
                if not path.exists():
                    raise AlolError(f"{path}: missing from the PRO layout (expected {', '.join(files)}).")
                split_name = path.stem if split == "test" else split
                out[split] += read_pro_file(path, split_name)
        return out
    if list(root.glob("*/train.jsonl.gz")):
        return {"train": read_hh_rlhf(root, "train"), "validation": [], "test": read_hh_rlhf(root, "test")}
    raise AlolError(f"{root}: neither PRO's layout (hh_train_len2/, hh_dev/, hh_test/) nor Anthropic's "
                    "(<subset>/train.jsonl.gz); point download.source at one of them.")


def clean_hh(raw: dict[str, list[dict]], cfg: HHCleanConfig) -> tuple[dict[str, pl.DataFrame], dict]:
    """Drop colon-ended pairs, number the rows, render prompts; count what was dropped."""
    dropped, frames = Counter(), {}
    test_dialogues = {r["group_id"] for r in raw["test"]}
    overlap = sum(r["group_id"] in test_dialogues for r in raw["validation"])
    for split, rows in raw.items():
        kept = []
        for row in rows:
            if split == "train" and cfg.drop_colon_endings and any(c.endswith(":") for c in row["candidates"]):
                dropped[f"{split}_colon_ending"] += 1
                continue
            if split == "validation" and cfg.drop_validation_in_test and row["group_id"] in test_dialogues:
                dropped["validation_in_test"] += 1
                continue
            kept.append(row)
        limit = cfg.max_rows.get(split, 0)
        kept = kept[:limit] if limit else kept
        frames[split] = pl.DataFrame([{
            "prompt_id": f"{split}-{i}", **row, "prompt": render_prompt(row["turns"], cfg.prompt_format),
            "completion": row["candidates"][0]} for i, row in enumerate(kept)],
            schema_overrides={"candidate_logits": pl.List(pl.Float64)})
    stats = {"rows": {s: f.height for s, f in frames.items()}, "read": {s: len(r) for s, r in raw.items()},
             "dropped": dict(dropped), "validation_prompts_in_test": overlap,
             "test_rows": dict(Counter(frames["test"]["split_name"].to_list())) if frames["test"].height else {}}
    return frames, stats


def fetch(cfg: DownloadConfig, out: Path, work: Path) -> dict:
    """HH data only (its models are hub ids / folders used in place) into `out/hh`: PRO's hh_* folders,
    or Anthropic's <subset>/{train,test}.jsonl.gz."""
    if not cfg.source:
        raise AlolError("download.source is required for the hh task (PRO's data.zip URL, a local zip, or a folder).")
    source_path = local_source(cfg.source, work)
    roots = [p.parent for p in source_path.rglob("hh_train_len2")] + [
        p.parent.parent for p in source_path.rglob("train.jsonl.gz")]
    if not roots:
        raise AlolError(f"download.source={cfg.source}: found neither hh_train_len2/ (PRO) nor "
                        "<subset>/train.jsonl.gz (Anthropic HH-RLHF) in it.")
    root = min(roots, key=lambda p: len(p.parts))
    names = [n for n in ("hh_train_len2", "hh_dev", "hh_test") if (root / n).is_dir()] or sorted(
        p.parent.name for p in root.glob("*/train.jsonl.gz"))
    for name in names:
        shutil.copytree(root / name, out / "hh" / name)
    return {"hh": {"source": cfg.source, "folders": names}}


def build(assets: Path, cfg: HHCleanConfig, base) -> tuple[dict[str, pl.DataFrame], dict, dict]:
    """The clean stage: the HH files as canonical tables (no tokenizer: prompts are rendered as text)."""
    splits, stats = clean_hh(load_hh(assets / "hh"), cfg)
    return splits, stats, {}


TASK = Task(
    name="hh", config=HHCleanConfig, fetch=fetch, build=build,
    optional_columns={"turns": pl.List(pl.String), "candidates": pl.List(pl.String),
                      "candidate_logits": pl.List(pl.Float64), "split_name": pl.String},
    asset_deps=("hh",),
    reads_base=False,  # prompts are text; no token limit, no seeded draw
    disjoint_groups=False,  # PRO's dev prompts are sampled from its test files (the paper's leak)
)
