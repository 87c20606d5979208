"""The noisy-data task: Kaggle comments decoded, a stated share of train replies replaced, the other
splits untouched, and bad input named."""

from __future__ import annotations

import tempfile

import polars as pl
import pytest
import yaml

from alol.tasks.dataset import DatasetConfig, build_splits, load, read_rows
from alol.tasks.noise import NoiseConfig, add_noise, decode_comment, load_insults
from alol.core.errors import AlolError
from alol.core.params import BaseConfig, from_dict
from conftest import build_tokenizer, run_stage
from test_clean import ROOT_CLEAN, chitchat_file, synthetic

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
    source = chitchat_file(synthetic(), tmp_path / "c.jsonl", tmp_path / "work")
    settings = {**ROOT_CLEAN, "source": str(source), "splits": {"validation": 5, "test": 5}}
    clean_cfg = from_dict(DatasetConfig, settings, "clean")
    noisy_cfg = from_dict(DatasetConfig, {**settings, "noise": {"fraction": 0.5, "insult_share": 1.0}}, "clean")
    base = BaseConfig(seed=3)
    with tempfile.TemporaryDirectory() as cache:  # the same reply rows for both: only the noise differs
        frame, fmt, read = read_rows(load(clean_cfg, cache), clean_cfg, tiny_tokenizer, base, cache)
    clean, _ = build_splits(frame, fmt, clean_cfg, base, read)
    noisy, stats = build_splits(frame, fmt, noisy_cfg, base, read, insults=["you utter fool"] * 40,
                                count_tokens=words)
    assert stats["noise"] == {"clean": 30, "insult": 30, "misaligned": 0}  # 60 train rows x 0.5
    assert noisy["validation"].equals(clean["validation"]) and noisy["test"].equals(clean["test"])
    assert (noisy["train"]["completion"] != clean["train"]["completion"]).sum() == 30
    assert "noise" not in clean["train"].columns and "noise" not in noisy["test"].columns


def test_clean_stage_reads_the_insults_from_the_assets(tmp_path):
    assets = tmp_path / "data" / "assets"
    chitchat_file(synthetic(12), tmp_path / ROOT_CLEAN["source"], tmp_path / "work")
    (assets / "insults").mkdir(parents=True)
    (assets / "insults" / "fulltrain.csv").write_text(CSV)
    build_tokenizer(assets / "policy")
    clean = {**ROOT_CLEAN, "splits": {"validation": 3, "test": 3}, "noise": {"fraction": 0.25, "insult_share": 0.5}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"task": "dataset", "clean": clean}))
    proc = run_stage("clean.py", "data/assets", "out", "stats.json", "--params", "params.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    train = pl.read_parquet(tmp_path / "out" / "train.parquet")
    assert train.height == 18 and train["noise"].value_counts().sort("noise").rows() == [
        ("clean", 14), ("insult", 2), ("misaligned", 2)]  # 18 x 0.25 = 4.5 -> 4 (round half to even), half each
    assert set(train.filter(pl.col("noise") == "insult")["completion"]) == {"You are an idiot.", "shut up you clown"}
    assert "noise" not in pl.read_parquet(tmp_path / "out" / "test.parquet").columns
    (assets / "insults" / "fulltrain.csv").unlink()
    proc = run_stage("clean.py", "data/assets", "out2", "stats2.json", "--params", "params.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and "download.insults: true" in proc.stderr
    assert not (tmp_path / "out2").exists() and not (tmp_path / "stats2.json").exists()
