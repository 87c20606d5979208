"""The chitchat clean stage: pairs, roles, filters, splits, and bad input."""

from __future__ import annotations

import json

import polars as pl
import pytest

from alol.tasks.chitchat import CleanConfig, build_splits, conversation_rows, load_conversations
from alol.core.params import BaseConfig
from conftest import build_tokenizer, run_stage


def message(text, sender="a"):
    return {"text": text, "timestamp": "2018-05-02T19:38:15Z", "sender": sender}


def conversation(*turns):
    return {"messages": [[message(t, sender="ab"[i % 2]) for t in (turn if isinstance(turn, list) else [turn])]
                         for i, turn in enumerate(turns)], "start": "2018-05-02T19:38:15Z"}


def synthetic(n=30):
    data = {f"conv{i:02d}": conversation("hello there", ["i am fine", f"thanks {i}"], "what do you like",
                                         "i like hiking") for i in range(n)}
    return data


def test_rows_alternate_roles_and_reply_as_assistant():
    convs = [("c", ["t0", "t1", "t2", "t3"])]
    rows, _ = conversation_rows(convs, CleanConfig(context_turns=2, system_prompt="SYS"))
    assert [r["completion"] for r in rows] == ["t1", "t2", "t3"]
    last = rows[-1]
    assert last["messages"] == [{"role": "system", "content": "SYS"}, {"role": "assistant", "content": "t1"},
                                {"role": "user", "content": "t2"}]
    assert last["context"] == "t2" and last["prompt_id"] == "c:3" and last["group_id"] == "c"


def test_filters_are_counted():
    convs = [("a", ["hi", "", "http://x.com www.y.org", "ok"]), ("b", ["hi", "", "http://x.com www.y.org", "ok"]),
             ("c", ["ok", "hi"])]
    rows, dropped = conversation_rows(convs, CleanConfig(context_turns=1))
    # a: '' empty, url-only, then ("http.." -> "ok") kept; b repeats a: its ("http.." -> "ok") is a duplicate
    assert dropped == {"empty": 2, "url_only": 2, "duplicate": 1}
    assert [(r["context"], r["completion"]) for r in rows] == [("http://x.com www.y.org", "ok"), ("ok", "hi")]


def test_no_group_in_two_splits_and_same_seed_same_splits(tiny_tokenizer, tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(synthetic()))
    cfg = CleanConfig(validation_conversations=5, test_conversations=5, max_rows={"train": 0})
    splits, stats = build_splits(load_conversations(path), tiny_tokenizer, cfg, BaseConfig(seed=3))
    groups = {name: set(frame["group_id"]) for name, frame in splits.items()}
    assert not groups["train"] & groups["validation"] and not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    assert len(groups["validation"]) == 5 and len(groups["test"]) == 5 and len(groups["train"]) == 20
    assert stats["rows"]["train"] == 20 * 3
    again, _ = build_splits(load_conversations(path), tiny_tokenizer, cfg, BaseConfig(seed=3))
    assert all(again[name].equals(splits[name]) for name in splits)
    other, _ = build_splits(load_conversations(path), tiny_tokenizer, cfg, BaseConfig(seed=4))
    assert set(other["test"]["group_id"]) != groups["test"]


def test_prompt_is_the_chat_template_and_lengths_are_counted(tiny_tokenizer, tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(synthetic(12)))
    cfg = CleanConfig(validation_conversations=1, test_conversations=1, system_prompt=None, max_rows={})
    splits, _ = build_splits(load_conversations(path), tiny_tokenizer, cfg, BaseConfig(seed=0))
    row = splits["train"].filter(pl.col("completion") == "i like hiking").row(0, named=True)
    n = int(row["group_id"][4:])
    # k = 3 turns before the reply; roles alternate backwards from the user turn it answers
    assert row["prompt"] == ("<|im_start|>system\nYou are a tiny test model<|im_end|>\n"
                             "<|im_start|>user\nhello there<|im_end|>\n"
                             f"<|im_start|>assistant\ni am fine\nthanks {n}<|im_end|>\n"
                             "<|im_start|>user\nwhat do you like<|im_end|>\n<|im_start|>assistant\n")
    assert row["prompt"] == tiny_tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
    assert row["prompt"].endswith("<|im_start|>user\nwhat do you like<|im_end|>\n<|im_start|>assistant\n")
    assert row["prompt_tokens"] == len(tiny_tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    assert row["completion_tokens"] == len(tiny_tokenizer("i like hiking", add_special_tokens=False)["input_ids"]) + 1


def test_length_limits_drop_rows(tiny_tokenizer, tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(synthetic(12)))
    cfg = CleanConfig(validation_conversations=1, test_conversations=1, max_rows={})
    splits, stats = build_splits(load_conversations(path), tiny_tokenizer, cfg, BaseConfig(seed=0, max_completion_tokens=4))
    assert stats["dropped"]["completion_too_long"] > 0
    assert all(n <= 4 for frame in splits.values() for n in frame["completion_tokens"])


# --- bad input, through the stage command: clear error, exit 1, no partial output -------------

@pytest.fixture()
def assets(tmp_path):
    build_tokenizer(tmp_path / "assets" / "policy")
    (tmp_path / "assets" / "chitchat").mkdir()
    (tmp_path / "params.yaml").write_text("clean:\n  validation_conversations: 1\n  test_conversations: 1\n")
    return tmp_path / "assets"


def run_clean(assets, data):
    path = assets / "chitchat" / "dataset.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    root = assets.parent
    return run_stage("clean.py", assets, root / "out", root / "stats.json", "--params", root / "params.yaml")


def assert_failed_cleanly(proc, root, *fragments):
    assert proc.returncode == 1, proc.stderr
    message = " ".join(proc.stderr.split())
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in proc.stderr
    assert not (root / "out").exists() and not (root / "stats.json").exists()


def test_truncated_dataset_json(assets):
    text = json.dumps(synthetic(5))
    proc = run_clean(assets, text[: len(text) // 2])
    assert_failed_cleanly(proc, assets.parent, "dataset.json: not valid JSON at line 1", "truncated or corrupt")


def test_conversation_without_messages(assets):
    data = synthetic(5)
    data["conv03"]["messages"] = []
    assert_failed_cleanly(run_clean(assets, data), assets.parent, "conversation 'conv03' has no messages")


def test_message_with_null_text(assets):
    data = synthetic(5)
    data["conv02"]["messages"][1][0]["text"] = None
    assert_failed_cleanly(run_clean(assets, data), assets.parent,
                          "conversation 'conv02', turn 1, message 0: text is null")


def test_clean_stage_writes_all_outputs(assets):
    proc = run_clean(assets, synthetic(12))
    assert proc.returncode == 0, proc.stderr
    root = assets.parent
    assert {p.name for p in (root / "out").iterdir()} == {"train.parquet", "validation.parquet", "test.parquet"}
    stats = json.loads((root / "stats.json").read_text())
    assert stats["conversations"] == 12 and stats["rows"]["validation"] == 3
