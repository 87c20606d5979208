"""The dataset task: every format read from tiny files written here, each row checked against a hand-written
expectation (the prompt exactly as the policy sees it), the filters' counts, the splits, and every error."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from alol.core.errors import AlolError
from alol.core.params import BaseConfig, from_dict
from alol.tasks import TASKS
from alol.tasks.dataset import DatasetConfig
from conftest import build_tokenizer

TASK = TASKS["dataset"]
SYS = "<|im_start|>system\nYou are a tiny test model<|im_end|>\n"  # the tiny template's default system turn
GEN = "<|im_start|>assistant\n"


def turn(role: str, text: str) -> str:
    return f"<|im_start|>{role}\n{text}<|im_end|>\n"


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("assets")
    build_tokenizer(root / "policy")
    return root


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def clean(assets: Path, source: Path | str, base: dict | None = None, **settings):
    """(splits, stats) of the dataset task; every row gets a split from its `split` column unless set."""
    settings.setdefault("splits", {"column": "split"})
    cfg = from_dict(DatasetConfig, {"source": str(source), **settings}, "clean")
    splits, stats, extra = TASK.tables(assets, cfg, from_dict(BaseConfig, base or {}, "base"))
    assert extra == {}
    return splits, stats


def rows_of(splits) -> list[tuple]:
    return [(s, r["prompt"], r["completion"], r["group_id"]) for s in ("train", "validation", "test")
            for r in splits[s].iter_rows(named=True)]


THREE = [{"split": s} for s in ("train", "validation", "test")]  # one row per split


def test_prompt_completion_rendered_with_the_chat_template(assets, tmp_path):
    data = [{"question": f"q{i}", "answer": f"a{i}", **THREE[i]} for i in range(3)]
    splits, stats = clean(assets, write_jsonl(tmp_path / "d.jsonl", data), columns={"prompt": "question",
                                                                                     "completion": "answer"})
    assert stats["format"] == "prompt_completion"
    assert rows_of(splits) == [("train", SYS + turn("user", "q0") + GEN, "a0", "train-0"),
                               ("validation", SYS + turn("user", "q1") + GEN, "a1", "train-1"),
                               ("test", SYS + turn("user", "q2") + GEN, "a2", "train-2")]
    train = splits["train"].row(0, named=True)
    assert train["context"] == "q0" and train["prompt_id"] == "train-0"
    assert train["messages"] == [{"role": "user", "content": "q0"}]
    assert train["completion_tokens"] == len(build_tokenizer()("a0", add_special_tokens=False)["input_ids"]) + 1


def test_plain_prompt_without_the_template(assets, tmp_path):
    data = [{"prompt": f"Q: {i}\nA:", "completion": f" {i}", **THREE[i]} for i in range(3)]
    splits, _ = clean(assets, write_jsonl(tmp_path / "d.jsonl", data), chat_template=False,
                      system_prompt="ignored: no template")
    assert [r[1:3] for r in rows_of(splits)] == [("Q: 0\nA:", " 0"), ("Q: 1\nA:", " 1"), ("Q: 2\nA:", " 2")]


def test_messages_every_assistant_turn_with_system_and_history(assets, tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how are you"},
            {"role": "assistant", "content": "fine"}]
    data = [{"messages": chat, "split": "train"},
            {"messages": [{"role": "user", "content": "v"}, {"role": "assistant", "content": "w"}], "split": "validation"},
            {"messages": [{"role": "user", "content": "t"}, {"role": "assistant", "content": "u"}], "split": "test"}]
    splits, stats = clean(assets, write_jsonl(tmp_path / "d.jsonl", data))
    head = turn("system", "Be brief.")
    assert rows_of(splits) == [
        ("train", head + turn("user", "hi") + GEN, "hello", "train-0"),
        ("train", head + turn("user", "hi") + turn("assistant", "hello") + turn("user", "how are you") + GEN,
         "fine", "train-0"),
        ("validation", SYS + turn("user", "v") + GEN, "w", "train-1"),
        ("test", SYS + turn("user", "t") + GEN, "u", "train-2")]
    assert splits["train"]["prompt_id"].to_list() == ["train-0:1", "train-0:3"]
    assert splits["train"]["context"].to_list() == ["hi", "how are you"]
    # replies: last, and a system prompt from params where the chat has none
    splits, _ = clean(assets, tmp_path / "d.jsonl", replies="last", system_prompt="P")
    assert [r[1:3] for r in rows_of(splits)] == [
        (head + turn("user", "hi") + turn("assistant", "hello") + turn("user", "how are you") + GEN, "fine"),
        (turn("system", "P") + turn("user", "v") + GEN, "w"), (turn("system", "P") + turn("user", "t") + GEN, "u")]


def test_two_speakers_and_history_window(assets, tmp_path):
    """speakers: both (the default's chit-chat): every turn after the first is a reply, roles counted back."""
    chat = lambda k: [{"role": r, "content": c + k} for r, c in  # noqa: E731  (the file's roles do not matter)
                      (("user", "a"), ("assistant", "b"), ("user", "c"))]
    data = [{"messages": chat(""), "id": "c1", "split": "train"},
            {"messages": chat("1"), "id": "c2", "split": "validation"}, {"messages": chat("2"), "id": "c3", "split": "test"}]
    splits, _ = clean(assets, write_jsonl(tmp_path / "d.jsonl", data), speakers="both", max_history_turns=1,
                      columns={"group": "id"}, system_prompt="S")
    train = splits["train"]
    assert train["prompt"].to_list() == [turn("system", "S") + turn("user", "a") + GEN,
                                         turn("system", "S") + turn("user", "b") + GEN]
    assert train["completion"].to_list() == ["b", "c"] and train["prompt_id"].to_list() == ["c1:1", "c1:2"]
    assert train["group_id"].to_list() == ["c1", "c1"]
    splits, _ = clean(assets, tmp_path / "d.jsonl", speakers="both", columns={"group": "id"}, system_prompt="S")
    assert splits["train"]["prompt"][1] == turn("system", "S") + turn("assistant", "a") + turn("user", "b") + GEN


def test_sharegpt_conversations(assets, tmp_path):
    conv = lambda q, a: [{"from": "human", "value": q}, {"from": "gpt", "value": a}]  # noqa: E731
    data = [{"conversations": conv("q", "a"), "split": "train"}, {"conversations": conv("r", "b"), "split": "validation"},
            {"conversations": [{"from": "system", "value": "S"}, *conv("s", "c")], "split": "test"},
            {"conversations": [{"from": "gpt", "value": "x"}, {"from": "gpt", "value": "y"}], "split": "train"},
            {"conversations": [{"from": "narrator", "value": "x"}], "split": "train"},
            {"conversations": [], "split": "train"}]
    splits, stats = clean(assets, write_jsonl(tmp_path / "d.jsonl", data))
    assert stats["format"] == "sharegpt"
    assert rows_of(splits) == [("train", SYS + turn("user", "q") + GEN, "a", "train-0"),
                               ("validation", SYS + turn("user", "r") + GEN, "b", "train-1"),
                               ("test", turn("system", "S") + turn("user", "s") + GEN, "c", "train-2")]
    assert stats["dropped"] == {"duplicate": 0, "empty_conversation": 1, "roles_out_of_order": 1, "unknown_role": 1}
    with pytest.raises(AlolError, match=r"train split, row 3: two user or two assistant.*roles_out_of_order; 3 rows with defects"):
        clean(assets, tmp_path / "d.jsonl", strict=True)


def test_preference_explicit_keeps_the_pair_in_the_data_order(assets, tmp_path):
    data = [{"prompt": f"p{i}", "chosen": f"good{i}", "rejected": f"bad{i}", **THREE[i]} for i in range(3)]
    data.append({"prompt": "p3", "chosen": "same", "rejected": "same", "split": "train"})
    splits, stats = clean(assets, write_jsonl(tmp_path / "d.jsonl", data))
    assert stats["format"] == "preference" and stats["dropped"]["same_pair"] == 1
    train = splits["train"].row(0, named=True)
    assert (train["prompt"], train["completion"], train["candidates"]) == (
        SYS + turn("user", "p0") + GEN, "good0", ["good0", "bad0"])
    assert TASK.provides("candidates", splits["train"]) and TASK.candidates_ranked


def test_preference_implicit_prompt_from_anthropic_transcripts(assets, tmp_path):
    t = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: tell me a joke\n\nAssistant:"
    data = [{"chosen": t + " Why did the chicken cross", "rejected": t + " No.", **THREE[0]},
            {"chosen": "I like cats", "rejected": "I like cars", **THREE[1]},
            {"chosen": "abc", "rejected": "xyz", **THREE[2]}, {"chosen": "I like", "rejected": "I like", **THREE[2]}]
    write_jsonl(tmp_path / "d.jsonl", data[:3] + [{"chosen": "tea", "rejected": "coffee", "split": "test"}])
    with pytest.raises(AlolError, match="test split is empty after the filters.*no_shared_prompt': 2"):
        clean(assets, tmp_path / "d.jsonl")
    write_jsonl(tmp_path / "d.jsonl", data[:2] + [{"chosen": "Say: yes", "rejected": "Say: no", **THREE[2]}])
    splits, _ = clean(assets, tmp_path / "d.jsonl")
    assert rows_of(splits) == [
        ("train", SYS + turn("user", "hi there") + turn("assistant", "hello") + turn("user", "tell me a joke") + GEN,
         "Why did the chicken cross", "train-0"),
        ("validation", SYS + turn("user", "I like") + GEN, "cats", "train-1"),
        ("test", SYS + turn("user", "Say:") + GEN, "yes", "train-2")]
    assert splits["train"]["candidates"][0].to_list() == ["Why did the chicken cross", "No."]


def test_conversational_prompt_completion_and_preference(assets, tmp_path):
    """TRL's conversational forms: the prompt a chat, the replies one-message chats."""
    u, a = (lambda c: {"role": "user", "content": c}), (lambda c: {"role": "assistant", "content": c})  # noqa: E731
    data = [{"prompt": [u(f"x{i}")], "completion": [a(f"y{i}")], **THREE[i]} for i in range(3)]
    splits, _ = clean(assets, write_jsonl(tmp_path / "d.jsonl", data))
    assert rows_of(splits)[0] == ("train", SYS + turn("user", "x0") + GEN, "y0", "train-0")
    pref = [{"chosen": [u(f"q{i}"), a("c")], "rejected": [u(f"q{i}"), a("r")], **THREE[i]} for i in range(3)]
    splits, _ = clean(assets, write_jsonl(tmp_path / "p.jsonl", pref))
    assert rows_of(splits)[0] == ("train", SYS + turn("user", "q0") + GEN, "c", "train-0")


def test_unpaired_preference_labels(assets, tmp_path):
    data = [{"prompt": "p", "completion": f"c{i}", "label": i % 2 == 0, **THREE[i]} for i in range(3)]
    data.append({"prompt": "p", "completion": "c9", "label": None, "split": "train"})
    splits, stats = clean(assets, write_jsonl(tmp_path / "d.jsonl", data))
    assert stats["format"] == "unpaired_preference" and stats["dropped"]["no_label"] == 1
    assert [f["label"].to_list() for f in splits.values()] == [[True], [False], [True]]
    write_jsonl(tmp_path / "bad.jsonl", [{**r, "label": 1} for r in data[:3]])
    with pytest.raises(AlolError, match=r"column 'label' is int64, expected true / false \(bool\)"):
        clean(assets, tmp_path / "bad.jsonl")


def test_filters_are_counted(assets, tmp_path):
    data = [{"prompt": "p", "completion": "ok", "split": "train"}, {"prompt": "p", "completion": "ok", "split": "train"},
            {"prompt": "p", "completion": "   ", "split": "train"}, {"prompt": "p", "completion": None, "split": "train"},
            {"prompt": None, "completion": "x", "split": "train"}, {"prompt": "p", "completion": "www.a.com", "split": "train"},
            {"prompt": "q", "completion": "v", "split": "validation"}, {"prompt": "r", "completion": "t", "split": "test"}]
    splits, stats = clean(assets, write_jsonl(tmp_path / "d.jsonl", data), drop_reply_pattern=r"www\.\S+")
    assert stats["dropped"] == {"duplicate": 1, "empty_reply": 1, "no_prompt": 1, "no_reply": 1, "reply_pattern": 1}
    assert splits["train"]["completion"].to_list() == ["ok"]


def test_too_long_truncates_oldest_turns_first_or_drops(assets, tmp_path):
    tok = build_tokenizer()
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    long_turn = "hello there how are you doing today " * 3
    chat = [{"role": "user", "content": long_turn}, {"role": "assistant", "content": "fine"},
            {"role": "user", "content": "the weather is nice"}, {"role": "assistant", "content": "i like hiking " * 20}]
    short = lambda k: [{"role": "user", "content": "q" + k}, {"role": "assistant", "content": "a"}]  # noqa: E731
    data = [{"messages": chat, "split": "train"}, {"messages": short("1"), "split": "validation"},
            {"messages": short("2"), "split": "test"}]
    recent = SYS + turn("user", "the weather is nice") + GEN
    limit = n(recent) + 2  # room for the last user turn, not for the long first one
    base = {"max_prompt_tokens": limit, "max_completion_tokens": 6}
    splits, stats = clean(assets, write_jsonl(tmp_path / "d.jsonl", data), base=base, replies="last")
    row = splits["train"].row(0, named=True)
    assert row["prompt"] == recent and row["prompt_tokens"] == n(recent) <= limit
    assert row["completion_tokens"] == 6 and n(row["completion"]) == 5 and "i like hiking".startswith(
        row["completion"].split(" hiking")[0])
    assert stats["truncated"]["train"] == {"prompts": 1, "completions": 1}
    with pytest.raises(AlolError, match="train split is empty.*prompt_too_long': 1"):
        clean(assets, tmp_path / "d.jsonl", base=base, replies="last", too_long="drop")


def test_held_out_splits_by_group_are_disjoint_and_seeded(assets, tmp_path):
    data = [{"id": f"g{i % 10}", "prompt": f"p{i}", "completion": f"c{i}"} for i in range(40)]
    source = write_jsonl(tmp_path / "d.jsonl", data)
    one, stats = clean(assets, source, columns={"group": "id"}, splits={"validation": 2, "test": 0.3})
    groups = {s: set(f["group_id"]) for s, f in one.items()}
    assert [len(groups[s]) for s in ("train", "validation", "test")] == [5, 2, 3]
    assert not (groups["train"] & groups["validation"] or groups["train"] & groups["test"]
                or groups["validation"] & groups["test"])
    assert stats["splits"] == {"from_data": ["train"], "held_out": ["test", "validation"], "unused": []}
    two, _ = clean(assets, source, columns={"group": "id"}, splits={"validation": 2, "test": 0.3})
    assert all(one[s].equals(two[s]) for s in one)
    other, _ = clean(assets, source, base={"seed": 2}, columns={"group": "id"}, splits={"validation": 2, "test": 0.3})
    assert not all(one[s].equals(other[s]) for s in one)
    # rows per split: a seeded subset, kept in the data's order
    drawn, _ = clean(assets, source, columns={"group": "id"}, splits={"validation": 2, "test": 3, "rows": {"train": 5}})
    ids = drawn["train"]["prompt_id"].to_list()
    assert len(ids) == 5 and ids == sorted(ids, key=lambda s: int(s.split("-")[1]))


def test_redraw_draws_validation_and_train_rows_anew_and_keeps_test_exactly(assets, tmp_path):
    """clean.splits.redraw (alol.compare --redraw): another seed's split, paired with seed 0 on the test rows."""
    data = [{"id": f"g{i % 30}", "prompt": f"p{i}", "completion": f"c{i}"} for i in range(120)]
    source = write_jsonl(tmp_path / "d.jsonl", data)
    splits = {"validation": 5, "test": 5, "rows": {"train": 40, "validation": 12, "test": 12}}
    zero, _ = clean(assets, source, columns={"group": "id"}, splits=splits)
    again, _ = clean(assets, source, columns={"group": "id"}, splits={**splits, "redraw": 0})
    assert all(zero[s].equals(again[s]) for s in zero)  # redraw 0 is the plain draw
    for redraw in (1, 2):
        other, stats = clean(assets, source, columns={"group": "id"}, splits={**splits, "redraw": redraw})
        assert other["test"].equals(zero["test"]) and stats["splits"]["redraw"] == redraw
        assert set(other["validation"]["group_id"]) != set(zero["validation"]["group_id"])
        assert set(other["train"]["prompt_id"]) != set(zero["train"]["prompt_id"])
        groups = {s: set(f["group_id"]) for s, f in other.items()}
        assert not (groups["train"] & groups["validation"] or groups["train"] & groups["test"]
                    or groups["validation"] & groups["test"])
        assert [f.height for f in other.values()] == [40, 12, 12]


def test_named_splits_from_data_files_in_a_folder(assets, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("tr", "va", "te"):
        pl.DataFrame({"prompt": [f"{name}-p"], "completion": [f"{name}-c"]}).write_parquet(folder / f"{name}.parquet")
    splits, stats = clean(assets, folder, data_files={"train": "tr.parquet", "validation": "va.parquet",
                                                      "test": "te.parquet"}, splits={})
    assert [f["completion"].to_list() for f in splits.values()] == [["tr-c"], ["va-c"], ["te-c"]]
    assert stats["splits"]["held_out"] == []


def test_keep_columns_travel_with_their_dtype(assets, tmp_path):
    data = [{"prompt": "p", "completion": f"c{i}", "rating": i + 0.5, **THREE[i]} for i in range(3)]
    splits, _ = clean(assets, write_jsonl(tmp_path / "d.jsonl", data), keep=["rating"])
    assert splits["test"]["rating"].to_list() == [2.5]


# --- what is wrong with the whole input: an error naming what to fix ----------------------------------

def test_missing_mapped_column_lists_the_columns(assets, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "a": "y", "split": "train"}])
    with pytest.raises(AlolError, match=r"maps prompt to column 'question'.*its columns are \['q', 'a', 'split'\]"):
        clean(assets, tmp_path / "d.jsonl", columns={"prompt": "question"})
    with pytest.raises(AlolError, match=r"format messages reads column\(s\) \['messages'\].*columns: \{messages:"):
        clean(assets, tmp_path / "d.jsonl", format="messages")


def test_undetectable_format_says_what_was_looked_for(assets, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "a": "y", "split": "train"}])
    with pytest.raises(AlolError, match=r"cannot tell the data's format.*messages: messages; sharegpt: conversations"
                                        r".*prompt_completion: prompt \+ completion"):
        clean(assets, tmp_path / "d.jsonl")


def test_a_list_where_a_string_is_expected(assets, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "completion": [1, 2], "split": "train"}])
    with pytest.raises(AlolError, match=r"column 'completion' is list<item: int64>, expected a string or a list of "
                                        r"\{role, content\} messages"):
        clean(assets, tmp_path / "d.jsonl")


def test_a_file_that_is_not_what_its_extension_says(assets, tmp_path):
    (tmp_path / "d.parquet").write_text('{"prompt": "x", "completion": "y"}\n')
    with pytest.raises(AlolError, match=r"d.parquet: read as parquet, which failed.*Is the file complete, and what its extension"):
        clean(assets, tmp_path / "d.parquet")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(AlolError, match=r"unknown file type '.txt'"):
        clean(assets, tmp_path / "d.txt")


def test_a_hub_id_without_network(assets, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(AlolError, match=r"no such file or folder .* taken for a hub dataset id.*point clean.source at "
                                        "a local file"):
        clean(assets, "someone/no-such-dataset-here")


def test_empty_after_the_filters_gives_the_counts(assets, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": " ", "split": s} for s in ("train", "test")])
    with pytest.raises(AlolError, match=r"no row is left after the filters \(dropped: \{'duplicate': 0, 'empty_reply': 2\}\)"):
        clean(assets, tmp_path / "d.jsonl")


def test_unknown_split_values_and_no_train_split(assets, tmp_path):
    write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c", "split": "dev"}])
    with pytest.raises(AlolError, match=r"column 'split' has value\(s\) \['dev'\]"):
        clean(assets, tmp_path / "d.jsonl")
    with pytest.raises(AlolError, match=r"no train split"):
        clean(assets, tmp_path / "d.jsonl", splits={"column": "split", "names": {"test": "dev"}})


def test_render_is_apply_chat_template(assets):
    """The renderer skips apply_chat_template's normalisation only: the same text for every chat shape."""
    from alol.tasks.dataset import Renderer

    tok = build_tokenizer()
    chats = [[{"role": "user", "content": "a"}], [{"role": "system", "content": "s"}, {"role": "user", "content": "b"},
                                                 {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]]
    renderer = Renderer.for_policy(tok, DatasetConfig(), BaseConfig(), needs_template=True)
    assert renderer.render(chats) == tok.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)


def test_history_is_trimmed_by_summed_message_counts_before_any_render():
    """The estimate alone (fixed + per-message overhead + content tokens) picks the window: the newest
    turns that fit, the system message always kept."""
    from alol.tasks.dataset import Renderer

    tok = build_tokenizer()
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    history = [{"role": "user", "content": "hello there how are you doing today " * 4},
               {"role": "assistant", "content": "fine"}, {"role": "user", "content": "nice"}]
    full = n(tok.apply_chat_template([{"role": "system", "content": "s"}, *history], tokenize=False,
                                     add_generation_prompt=True))
    base = BaseConfig(max_prompt_tokens=full - 5)
    renderer = Renderer.for_policy(tok, DatasetConfig(), base, needs_template=True)
    window, = renderer._windows([{"history": history, "system": "s"}])
    assert window == [{"role": "system", "content": "s"}, *history[1:]]
