"""The noisy-data task: Kaggle comments decoded, a stated share of train replies replaced, the other
splits untouched, and bad input named."""

from __future__ import annotations

import json

import polars as pl
import pytest

from alol.tasks.chitchat import CleanConfig, build_splits, load_conversations
from alol.tasks.noise import NoiseConfig, add_noise, decode_comment, load_insults
from alol.core.errors import AlolError
from alol.core.params import BaseConfig
from conftest import run_stage
from test_clean import synthetic

CSV = "\n".join([
    ",Comment,Date,Insult,Usage",
    '0,"""You are an idiot.""",20120618192155Z,1,',
    '1,"""i really don\'t understand your point.\\xa0 It seems fine.""",,0,',
    '2,"""shut up\\\\nyou\\\\xc2\\\\xa0clown""",,1,',
    '3,"""no""",,1,',  # under 3 words: not used
    '4,"""' + " ".join(["word"] * 40) + '""",,1,',  # over max_insult_words: not used
]) + "\n"


def test_decode_comment_turns_escapes_into_spaces():
    # the CSV keeps Python-style escapes, sometimes doubled: "\\n", "\\xc2\\xa0", "\'"
    assert decode_comment('"shut up\\\\nyou\\\\xc2\\\\xa0clown"') == "shut up you clown"
    assert decode_comment('"don\\\'t\\tgo\\\\"') == "don't go"


def test_load_insults_keeps_labelled_insults_of_the_right_length(tmp_path):
    path = tmp_path / "fulltrain.csv"
    path.write_text(CSV)
    assert load_insults(path, max_words=30) == ["You are an idiot.", "shut up you clown"]
    path.write_text(CSV.replace(",1,\n", ",yes,\n", 1))
    with pytest.raises(AlolError, match="fulltrain.csv: line 2, column Insult: 'yes'"):
        load_insults(path, max_words=30)
    with pytest.raises(AlolError, match="download.insults: true"):
        load_insults(tmp_path / "missing.csv", max_words=30)


def frame(n: int) -> pl.DataFrame:
    return pl.DataFrame({"prompt_id": [f"c{i // 2}:{i % 2 + 1}" for i in range(n)], "group_id": [f"c{i // 2}" for i in
                         range(n)], "completion": [f"reply {i}" for i in range(n)], "completion_tokens": [3] * n})


def words(texts):
    return [len(t.split()) + 1 for t in texts]


def test_add_noise_replaces_the_stated_share():
    # 20 rows x fraction 0.4 = 8 replaced; insult_share 0.5 -> 4 insults and 4 misaligned replies
    train = frame(20)
    insults = ["you utter fool", "what a clown you are", "nobody asked you", "go away troll", "idiot"]
    noisy, counts = add_noise(train, insults, NoiseConfig(fraction=0.4, insult_share=0.5), 7, words, 48)
    assert counts == {"clean": 12, "insult": 4, "misaligned": 4}
    rows = noisy.to_dicts()
    for row, before in zip(rows, train.to_dicts()):
        if row["noise"] == "clean":
            assert row["completion"] == before["completion"]
        elif row["noise"] == "insult":
            assert row["completion"] in insults
        else:  # another train row's own reply, from a different conversation
            donor = int(row["completion"].split()[1])  # "reply <row>": row <row> is in conversation c<row // 2>
            assert f"c{donor // 2}" != row["group_id"]
    assert noisy["completion_tokens"].to_list() == words(noisy["completion"].to_list())
    again, _ = add_noise(train, insults, NoiseConfig(fraction=0.4, insult_share=0.5), 7, words, 48)
    assert again.equals(noisy)


def test_insults_too_long_for_the_token_limit_are_refused():
    with pytest.raises(AlolError, match="4 insult replies needed, only 0 fit base.max_completion_tokens=2"):
        add_noise(frame(20), ["you utter fool"] * 5, NoiseConfig(fraction=0.4), 7, words, 2)


def test_only_the_train_split_gets_noise(tiny_tokenizer, tmp_path):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(synthetic()))
    clean_cfg = CleanConfig(validation_conversations=5, test_conversations=5, max_rows={"train": 0})
    noisy_cfg = CleanConfig(validation_conversations=5, test_conversations=5, max_rows={"train": 0},
                            noise=NoiseConfig(fraction=0.5, insult_share=1.0))
    clean, _ = build_splits(load_conversations(path), tiny_tokenizer, clean_cfg, BaseConfig(seed=3))
    noisy, stats = build_splits(load_conversations(path), tiny_tokenizer, noisy_cfg, BaseConfig(seed=3),
                                insults=["you utter fool"] * 40)
    assert stats["noise"] == {"clean": 30, "insult": 30, "misaligned": 0}  # 60 train rows x 0.5
    assert noisy["validation"].equals(clean["validation"]) and noisy["test"].equals(clean["test"])
    assert (noisy["train"]["completion"] != clean["train"]["completion"]).sum() == 30


def test_clean_stage_reads_the_insults_from_the_assets(tmp_path):
    assets = tmp_path / "assets"
    (assets / "chitchat").mkdir(parents=True)
    (assets / "insults").mkdir()
    (assets / "chitchat" / "dataset.json").write_text(json.dumps(synthetic(12)))
    (assets / "insults" / "fulltrain.csv").write_text(CSV)
    from conftest import build_tokenizer

    build_tokenizer().save_pretrained(assets / "policy")
    (tmp_path / "params.yaml").write_text(
        "clean:\n  validation_conversations: 3\n  test_conversations: 3\n  max_rows: {train: 0}\n"
        "  noise: {fraction: 0.25, insult_share: 0.5}\n")
    proc = run_stage("clean.py", assets, tmp_path / "out", tmp_path / "stats.json", "--params", tmp_path / "params.yaml")
    assert proc.returncode == 0, proc.stderr
    train = pl.read_parquet(tmp_path / "out" / "train.parquet")
    assert train.height == 18 and train["noise"].value_counts().sort("noise").rows() == [
        ("clean", 14), ("insult", 2), ("misaligned", 2)]  # 18 x 0.25 = 4.5 -> 4 (round half to even), half each
    assert "noise" not in pl.read_parquet(tmp_path / "out" / "test.parquet").columns
    (assets / "insults" / "fulltrain.csv").unlink()
    proc = run_stage("clean.py", assets, tmp_path / "out2", tmp_path / "stats2.json", "--params",
                     tmp_path / "params.yaml")
    assert proc.returncode == 1 and "download.insults: true" in proc.stderr
    assert not (tmp_path / "out2").exists()
