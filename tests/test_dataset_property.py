"""Property tests of the dataset task's reader: random rows and column maps.

Valid inputs give exactly the rows a small independent oracle expects; each kind of bad row gives its own
drop reason; any JSON at all gives a table that passes the canonical check, or our error (AlolError),
never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alol.core.errors import AlolError
from alol.core.params import BaseConfig, from_dict
from alol.tasks import TASKS
from alol.tasks.dataset import DatasetConfig
from conftest import build_tokenizer

SPLITS = ("train", "validation", "test")
WORDS = st.sampled_from(["hi", "you", "fine", "the weather", "nice", "a", "é ü", "😀"])
TEXT = st.lists(WORDS, min_size=1, max_size=4).map(" ".join)
NAMES = st.text("abcdefgh_", min_size=1, max_size=6).filter(lambda n: n != "split")
RUN = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("assets")
    build_tokenizer(root / "policy")
    return root


def run(assets: Path, folder: Path, rows: list[dict], **settings_):
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "data.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = from_dict(DatasetConfig, {"source": str(source), "splits": {"column": "split"}, **settings_}, "clean")
    base = from_dict(BaseConfig, {"max_prompt_tokens": 100_000, "max_completion_tokens": 100_000}, "base")
    splits, stats, _ = TASKS["dataset"].tables(assets, cfg, base)
    return splits, stats


def oracle(rows: list[dict], p: str, c: str) -> tuple[dict, dict] | str:
    """Expected (rows per split, drop counts), or the start of the expected error. Written from the
    task's documented rules, not its code: no prompt / no reply / blank reply are dropped in that order,
    then exact duplicates (first kept), then each split must keep a row."""
    sys_turn, gen = "<|im_start|>system\nYou are a tiny test model<|im_end|>\n", "<|im_start|>assistant\n"
    kept, dropped, seen = {s: [] for s in SPLITS}, {"duplicate": 0}, set()
    for i, row in enumerate(rows):
        prompt, reply = row.get(p), row.get(c)
        reason = ("no_prompt" if prompt is None or not prompt.strip() else "no_reply" if reply is None
                  else "empty_reply" if not reply.strip() else None)
        if reason is None and (prompt, reply) in seen:
            reason = "duplicate"
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        seen.add((prompt, reply))
        kept[row["split"]].append((f"{sys_turn}<|im_start|>user\n{prompt}<|im_end|>\n{gen}", reply, f"train-{i}"))
    if not any(kept.values()):
        return "no row is left after the filters"
    empty = [s for s in SPLITS if not kept[s]]
    return f"the {empty[0]} split is empty" if empty else (kept, dropped)


ROW = st.fixed_dictionaries({"p": st.one_of(TEXT, st.sampled_from(["", "  "]), st.none()),
                             "c": st.one_of(TEXT, st.just(" \n"), st.none()), "split": st.sampled_from(SPLITS)})


@RUN
@given(rows=st.lists(ROW, min_size=3, max_size=12), names=st.lists(NAMES, min_size=2, max_size=2, unique=True))
def test_valid_rows_under_any_column_names_give_the_oracles_rows(assets, tmp_path_factory, rows, names):
    p, c = names
    # the data names all three splits (a split it lacks would be held out of train: test_dataset.py's tests)
    splits = [*SPLITS, *(r["split"] for r in rows[3:])]
    renamed = [{p: r["p"], c: r["c"], "split": s} for r, s in zip(rows, splits)]
    expected = oracle(renamed, p, c)
    folder = tmp_path_factory.mktemp("valid")
    if isinstance(expected, str):
        with pytest.raises(AlolError, match=expected):
            run(assets, folder, renamed, columns={"prompt": p, "completion": c})
        return
    splits, stats = run(assets, folder, renamed, columns={"prompt": p, "completion": c})
    got = {s: list(zip(f["prompt"], f["completion"], f["prompt_id"])) for s, f in splits.items()}
    assert got == expected[0]
    assert stats["dropped"] == dict(sorted(expected[1].items()))


JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 3), TEXT),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.sampled_from(["role", "content", "from", "value", "x"]),
                                                            inner, max_size=3)), max_leaves=6)
ANY_ROW = st.fixed_dictionaries({}, optional={k: JSON for k in ("prompt", "completion", "messages", "chosen",
                                                                "rejected", "label", "conversations")})


@RUN
@given(rows=st.lists(ANY_ROW, min_size=1, max_size=8), split=st.sampled_from(SPLITS))
def test_any_json_gives_a_checked_table_or_our_error(assets, tmp_path_factory, rows, split):
    rows = [{**r, "split": s} for r, s in zip(rows, [*SPLITS, *[split] * len(rows)])]
    try:
        splits, _ = run(assets, tmp_path_factory.mktemp("any"), rows)
    except AlolError:
        return  # a clear error: the message is checked by the specific tests in test_dataset.py
    assert set(splits) == set(SPLITS) and all(f.height for f in splits.values())  # tables() checked them
