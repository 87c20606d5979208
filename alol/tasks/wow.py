"""Knowledge-grounded dialogue: Wizard of Wikipedia (WoW) and FaithDial, as canonical rows.

Source folder (download.source, copied to data/assets/wow/):
    wizard_of_wikipedia/{train,valid_topic_split,...}.json   parl.ai's wizard_of_wikipedia.tgz, extracted:
        [{"chosen_topic", "persona", "wizard_eval", "chosen_topic_passage",
          "dialog": [{"speaker": "0_Apprentice" | "0_Wizard" | ..., "text",
                      "checked_sentence": {key: sentence}, "checked_passage", ...}]}]
    faithdial/{train,valid,test}.json     McGill-NLP/FaithDial's data/ files: a list of dialogues
        {"utterances": [{"response", "original_response", "history": [...], "knowledge", "BEGIN", "VRM"}]}
        (a flat list or JSON lines of those records reads too)

An example is (history, knowledge, response). WoW (the authors' extraction): walk each dialogue;
an Apprentice turn joins the history; a Wizard turn with a checked sentence other than
`no_passages_used` becomes an example when the history is non-empty; the Wizard's text then
joins the history too.

The policy's prompt is `Knowledge: {knowledge}<eos>{turn}<eos>...{turn}<eos>` (<eos> the policy
tokenizer's EOS, DialoGPT's <|endoftext|>), the oldest turns dropped one by one until it fits
`clean.max_prompt_tokens` (400 in the paper).

Splits (`clean.dataset`):
    wow            train WoW train, validation WoW valid_topic_split (unseen topics), test FaithDial test
    faithdial      FaithDial train / valid / test
    faithdial_wow  train WoW train + FaithDial train (shuffled), validation WoW unseen + FaithDial valid,
                   test FaithDial test
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from alol.core.errors import AlolError
from alol.core.fetch import DownloadConfig, copy_source
from alol.tasks.base import SPLITS, Task

NO_PASSAGE = "no_passages_used"
# where each split of each dataset comes from: (source, file stem)
SOURCES = {
    "wow": {"train": [("wow", "train")], "validation": [("wow", "valid_topic_split")],
            "test": [("faithdial", "test")]},
    "faithdial": {"train": [("faithdial", "train")], "validation": [("faithdial", "valid")],
                  "test": [("faithdial", "test")]},
    "faithdial_wow": {"train": [("wow", "train"), ("faithdial", "train")],
                      "validation": [("wow", "valid_topic_split"), ("faithdial", "valid")],
                      "test": [("faithdial", "test")]},
}
FOLDERS = {"wow": "wizard_of_wikipedia", "faithdial": "faithdial"}


@dataclasses.dataclass
class WowCleanConfig:
    """`clean:` for the knowledge-grounded dialogue tasks (task: wow)."""

    dataset: Literal["wow", "faithdial", "faithdial_wow"] = "wow"
    """Which of the paper's three tasks: its train / validation / test sources (module docstring)."""
    max_prompt_tokens: int = 400
    """The oldest history turns are dropped, one at a time, until the prompt is at most this many policy
    tokens (the authors: 400 DialoGPT tokens). A prompt still longer with one turn left keeps that turn
    and is counted (base.max_prompt_tokens left-truncates it where a model reads it)."""
    max_rows: dict[str, int] = dataclasses.field(default_factory=lambda: {"train": 0, "validation": 0, "test": 0})
    """First this many rows per split after the train shuffle (0: all)."""


def wow_examples(dialogues: list[dict], where: str) -> list[dict]:
    """The authors' WoW extraction (module docstring), one dict per example."""
    out = []
    for d, dialogue in enumerate(dialogues):
        turns = dialogue.get("dialog") if isinstance(dialogue, dict) else None
        if not isinstance(turns, list):
            raise AlolError(f"{where}: dialogue {d} has no 'dialog' list; is this a wizard_of_wikipedia file?")
        history: list[str] = []
        group = f"wow-{hashlib.sha1(json.dumps([dialogue.get('chosen_topic'), turns[:1]]).encode()).hexdigest()[:12]}"
        for t, turn in enumerate(turns):
            speaker, text = str(turn.get("speaker", "")), turn.get("text")
            if not isinstance(text, str):
                raise AlolError(f"{where}: dialogue {d}, turn {t}: 'text' is not a string.")
            if speaker.endswith("Wizard"):
                checked = turn.get("checked_sentence") or {}
                knowledge = next(iter(checked.values()), None) if isinstance(checked, dict) else None
                if history and knowledge and knowledge != NO_PASSAGE:
                    out.append({"group_id": group, "history": list(history), "knowledge": knowledge,
                                "response": text, "source": "wow"})
            history.append(text)
    return out


def faithdial_examples(items: list[dict], where: str) -> list[dict]:
    """FaithDial records, from dialogues with `utterances` or from flat records."""
    out = []
    for d, item in enumerate(items):
        records = item.get("utterances", [item]) if isinstance(item, dict) else None
        if records is None:
            raise AlolError(f"{where}: item {d} is not a JSON object.")
        for r, rec in enumerate(records):
            missing = [k for k in ("response", "history", "knowledge") if k not in rec]
            if missing:
                raise AlolError(f"{where}: item {d}, record {r} lacks {missing}; expected FaithDial's "
                                "{response, original_response, history, knowledge, BEGIN, VRM}.")
            history = [str(h) for h in rec["history"]]
            key = item.get("dialog_idx", rec.get("dialog_idx")) if "utterances" in item else rec.get("dialog_idx")
            group = f"faithdial-{key}" if key is not None else \
                f"faithdial-{hashlib.sha1(json.dumps(history[:1]).encode()).hexdigest()[:12]}"
            out.append({"group_id": group, "history": history, "knowledge": str(rec["knowledge"]),
                        "response": str(rec["response"]), "source": "faithdial"})
    return out


def _read_json_items(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:  # JSON lines
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise AlolError(f"{path}: neither a JSON list nor JSON lines ({err}).") from None


def source_file(root: Path, source: str, stem: str) -> Path:
    folder = root / FOLDERS[source]
    if not folder.is_dir():  # an archive with a top folder of its own
        folder = min(root.rglob(FOLDERS[source]), key=lambda p: len(p.parts), default=folder)
    for candidate in (folder / f"{stem}.json", folder / f"{stem}.jsonl"):
        if candidate.exists():
            return candidate
    if stem == "valid" and (folder / "validation.json").exists():
        return folder / "validation.json"
    raise AlolError(f"{folder / (stem + '.json')}: missing. download.source must hold {FOLDERS['wow']}/ (parl.ai's "
                    f"extracted wizard_of_wikipedia.tgz) and/or {FOLDERS['faithdial']}/ (FaithDial's data/ files).")


def load_examples(root: Path, dataset: str) -> dict[str, list[dict]]:
    """The examples of each split of `dataset`, in file order (sources concatenated)."""
    out = {}
    for split, parts in SOURCES[dataset].items():
        out[split] = []
        for source, stem in parts:
            path = source_file(root, source, stem)
            reader = wow_examples if source == "wow" else faithdial_examples
            out[split] += [{**e, "file": f"{FOLDERS[source]}/{path.name}"} for e in reader(_read_json_items(path),
                                                                                          str(path))]
    return out


def render_prompt(knowledge: str, history: list[str], eos: str) -> str:
    """`Knowledge: {knowledge}<eos>{turn}<eos>...<eos>`, as the authors' DialoGPT prompt."""
    return f"Knowledge: {knowledge}{eos}{eos.join(history)}{eos}"


def fit_history(knowledge: str, history: list[str], tokenizer, max_tokens: int) -> tuple[list[str], bool]:
    """Drop the oldest turns until the prompt fits `max_tokens` policy tokens (at least one turn stays).
    Returns (kept turns, whether it fits)."""
    eos = tokenizer.eos_token
    for start in range(len(history)):
        kept = history[start:]
        if len(tokenizer(render_prompt(knowledge, kept, eos), add_special_tokens=False)["input_ids"]) <= max_tokens:
            return kept, True
        if len(kept) == 1:
            return kept, False
    return history, True  # empty history: nothing to drop


def build_wow_splits(raw: dict[str, list[dict]], tokenizer, cfg: WowCleanConfig,
                     seed: int) -> tuple[dict[str, pl.DataFrame], dict]:
    """Canonical tables: prompt_id, group_id, prompt, completion, context (the last history turn),
    turns (the kept history, what DialogRPT reads), knowledge, source."""
    frames, stats = {}, {"dataset": cfg.dataset, "read": {s: len(r) for s, r in raw.items()}, "rows": {},
                         "dropped": {},  # no example is dropped: long histories are trimmed
                         "sources": {}, "history_turns_dropped": {}, "prompt_over_limit": {}}
    for split in SPLITS:
        rows = list(raw[split])
        if split == "train" and len({r["source"] for r in rows}) > 1:  # faithdial_wow: the union, shuffled
            rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
        limit = cfg.max_rows.get(split, 0)
        rows = rows[:limit] if limit else rows
        dropped, over, out = 0, 0, []
        for i, row in enumerate(rows):
            kept, fits = fit_history(row["knowledge"], row["history"], tokenizer, cfg.max_prompt_tokens)
            dropped += len(row["history"]) - len(kept)
            over += not fits
            out.append({"prompt_id": f"{split}-{i}", "group_id": row["group_id"],
                        "prompt": render_prompt(row["knowledge"], kept, tokenizer.eos_token),
                        "completion": row["response"], "context": kept[-1] if kept else "", "turns": kept,
                        "knowledge": row["knowledge"], "source": row["source"]})
        if not out:
            raise AlolError(f"clean: the {split} split of {cfg.dataset} is empty; check download.source.")
        frames[split] = pl.DataFrame(out, schema_overrides={"turns": pl.List(pl.String)})
        stats["rows"][split] = len(out)
        stats["sources"][split] = dict(Counter(r["source"] for r in out))
        stats["history_turns_dropped"][split], stats["prompt_over_limit"][split] = dropped, over
    return frames, stats


def fetch(cfg: DownloadConfig, out: Path, work: Path) -> dict:
    """The user's WoW / FaithDial files (download.source) into `out/wow`, the policy into `out/policy`;
    reward models are used in place."""
    return copy_source("wow", cfg, out, work, "a folder holding wizard_of_wikipedia/ and/or faithdial/.")


def build(assets: Path, cfg: WowCleanConfig, base) -> tuple[dict[str, pl.DataFrame], dict, dict]:
    """The clean stage: clean.dataset's splits as canonical tables, prompts fit to the policy's tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets / "policy")  # the prompts fit the policy's tokens
    splits, stats = build_wow_splits(load_examples(assets / "wow", cfg.dataset), tokenizer, cfg, base.seed)
    return splits, stats, {}


TASK = Task(
    name="wow", config=WowCleanConfig, fetch=fetch, build=build,
    optional_columns={"turns": pl.List(pl.String), "knowledge": pl.String, "source": pl.String},
    asset_deps=("policy", "wow"),
    disjoint_groups=False,  # the datasets' own splits (WoW's, FaithDial's files), kept as published
)
