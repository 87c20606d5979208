"""The Reddit task: the Kaggle CSV reader and the authors' filters on small CSVs in the real format
(written here, never the real data), each reward component on a tiny random model of its real
architecture with a score worked out by hand, harper_fluency on sentences with known errors, and the
whole pipelines/reddit DAG through `dvc repro` on tiny random models."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from alol.tasks.reddit import (FILES, RedditCleanConfig, clean_reddit, collapse, load_reddit, pandas_sample_order,
                              read_csv, replace_urls)
from alol.core.errors import AlolError
from alol.rewards import build_component, reward_config
from alol.rewards.components import RewardInputs
from alol.rewards.diversity import Diversity
from conftest import REPO, build_tokenizer, deep_update

EOS = "<|endoftext|>"
COLUMNS = ["id", "parent_id", "subreddit_id", "link_id", "text", "score", "ups", "author", "controversiality",
           "parent_link_id", "parent_text", "parent_score", "parent_ups", "parent_author", "parent_controversiality"]


def dialogpt_tokenizer(path: Path | None = None):
    """The tiny BPE tokenizer with GPT-2's special-token layout: <|endoftext|> is bos, eos and unk."""
    tok = build_tokenizer()
    tok.eos_token = tok.bos_token = tok.unk_token = EOS
    tok.pad_token = None
    tok.chat_template = None
    if path is not None:
        tok.save_pretrained(path)
    return tok


def row(i: int, text: str, parent: str, score: int = 100, parent_id: str | None = None) -> dict:
    return {"id": f"c{i}", "parent_id": parent_id or f"t1_p{i}", "subreddit_id": "t5_2qh1i", "link_id": f"t3_l{i}",
            "text": text, "score": score, "ups": score, "author": f"user{i}", "controversiality": 0,
            "parent_link_id": f"t3_l{i}", "parent_text": parent, "parent_score": 50, "parent_ups": 50,
            "parent_author": f"op{i}", "parent_controversiality": 0}


def write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


PARENTS = ["what do you like to do for fun", "the weather is nice", "hello there how are you doing today",
           "i like hiking and reading books"]
REPLIES = ["i like hiking and reading books", "i am fine thanks and you", "the weather is nice today",
           "hello there", "what do you like", "you are so dumb and stupid"]


def kaggle_folder(root: Path, per_side: int = 16) -> dict[str, list[dict]]:
    """comments_positive.csv / comments_negative.csv with `per_side` good rows each plus one row per
    filter: missing text (empty field; pandas' "NA"), over 100 words, over 300 tokens; a URL and a
    multi-line quoted comment among the good rows."""
    written = {}
    for side, sign in (("pos", 1), ("neg", -1)):
        rows = [row(i, f"{REPLIES[i % len(REPLIES)]} {side} {i}", PARENTS[i % len(PARENTS)], sign * (100 + i),
                    parent_id=f"t1_{side}{i}") for i in range(per_side)]
        rows[1]["text"] = "see   https://www.reddit.com/r/x?a=1 for\nmore"  # whitespace and a URL
        rows += [row(100, "", "parent"), row(101, "NA", "parent"), row(102, "fine", "null"),
                 row(103, " ".join(["word"] * 101), "parent"),
                 row(104, "hi", "zqxj " * 80)]  # 80 words, but over 300 tokens (unknown words go by the byte)
        write_csv(root / FILES[side], rows)
        written[side] = rows
    return written


def test_csv_reader_and_filters_keep_the_authors_rows(tmp_path):
    kaggle_folder(tmp_path)
    tok = dialogpt_tokenizer()
    raw = load_reddit(tmp_path)
    assert len(raw["pos"]) == 21 and raw["pos"][1]["text"].endswith("for\nmore")  # a quoted field over two lines
    cfg = RedditCleanConfig(test_rows=3, validation_rows=3)
    splits, stats, replies = clean_reddit(raw, tok, cfg)
    # per side: 21 rows - 3 missing (empty, "NA", "null") - 1 over 100 words - 1 over 300 tokens = 16
    assert stats["dropped"]["pos"] == {"missing_text": 3, "over_max_words": 1, "over_max_tokens": 1}
    assert stats["kept"] == {"pos": 16, "neg": 16}
    assert stats["rows"] == {"train": 10, "validation": 6, "test": 6}
    assert splits["test"]["split_name"].to_list() == ["pos"] * 3 + ["neg"] * 3  # joint, pos then neg
    assert set(splits["train"]["split_name"]) == {"pos"} and replies.height == 20  # tf-idf: both sides' train
    # sampled order = pandas' sample(random_state=901): the first of permutation(n) after dropna
    order = pandas_sample_order(18, 102000, 901)
    present = [r for r in raw["pos"] if r["text"] not in ("", "NA") and r["parent_text"] != "null"]
    first = next(present[i] for i in order if present[i]["id"] not in ("c103", "c104"))  # the first one kept
    assert splits["test"].row(0, named=True)["completion"] == replace_urls(collapse(first["text"]))
    url_row = [r for r in splits["train"].vstack(splits["validation"]).vstack(splits["test"]).iter_rows(named=True)
               if r["completion"].startswith("see")]
    assert url_row[0]["completion"] == "see <URL> for more"
    test0 = splits["test"].row(0, named=True)
    assert test0["prompt"] == test0["context"] + EOS and test0["group_id"] == first["parent_id"]
    assert splits["train"]["score"].min() > 0
    neg = clean_reddit(raw, tok, RedditCleanConfig(train="neg", test_rows=3, validation_rows=3))[0]
    assert neg["train"]["score"].max() < 0 and neg["test"].equals(splits["test"])  # same joint test set
    # a limit keeps validation/test balanced
    small = clean_reddit(raw, tok, RedditCleanConfig(test_rows=3, validation_rows=3,
                                                     max_rows={"train": 2, "validation": 2, "test": 4}))[0]
    assert small["test"]["split_name"].to_list() == ["pos", "pos", "neg", "neg"] and small["train"].height == 2


def test_pandas_sample_order_is_the_first_n_of_the_seeded_permutation():
    assert pandas_sample_order(5, 3, 901).tolist() == np.random.RandomState(901).permutation(5)[:3].tolist()
    assert sorted(pandas_sample_order(5, 10, 901).tolist()) == [0, 1, 2, 3, 4]  # fewer rows: all, permuted


def test_url_replacement_and_missing_file(tmp_path):
    assert replace_urls("a http://x.org/b?c=d b www.y.com c https://z.io") == "a <URL> b <URL> c <URL>"
    with pytest.raises(AlolError, match="comments_positive.csv"):
        load_reddit(tmp_path)
    write_csv(tmp_path / "bad.csv", [])
    (tmp_path / "bad.csv").write_text("id,text\n1,hi\n")
    with pytest.raises(AlolError, match="parent_text"):
        read_csv(tmp_path / "bad.csv")


# --- reward components -----------------------------------------------------------------------------

def rows_of(prompts: list[str], replies: list[str]) -> RewardInputs:
    return RewardInputs(prompts=prompts, completions=replies, contexts=[p.removesuffix(EOS) for p in prompts])


def gpt2_config(tok, **extra):
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tok), n_positions=512, n_embd=32, n_layer=2, n_head=4,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, **extra)


def build_dialog_rpt(path: Path, seed: int = 0) -> Path:
    """A tiny random GPT2ForSequenceClassification with one logit, DialogRPT's layout (no pad id)."""
    from transformers import GPT2ForSequenceClassification

    tok = dialogpt_tokenizer()
    torch.manual_seed(seed)
    GPT2ForSequenceClassification(gpt2_config(tok, num_labels=1)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_toxichat(path: Path, seed: int = 0, fmt: str = "bin") -> Path:
    """A tiny DialoGPT body + Linear(n_embd, 2) head saved as a plain state dict (the ToxiChat layout:
    `transformer.*` and the head under its own name), with config.json and the tokenizer."""
    from transformers import GPT2Model

    tok = dialogpt_tokenizer()
    torch.manual_seed(seed)
    config = gpt2_config(tok)
    body, head = GPT2Model(config), torch.nn.Linear(32, 2)
    state = {f"transformer.{k}": v for k, v in body.state_dict().items()}
    state.update({"offensive_classifier.weight": head.weight.data, "offensive_classifier.bias": head.bias.data})
    path.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        torch.save(state, path / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors")
    config.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_cola(path: Path, seed: int = 0) -> Path:
    """A tiny random RobertaForSequenceClassification with two labels (textattack's CoLA layout)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=520, num_labels=2,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    RobertaForSequenceClassification(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def component(name: str, **settings):
    return build_component(name, reward_config(name, settings), Path("."), f"rewards.{name}")


PROMPTS = ["what do you like to do for fun" + EOS, "the weather is nice" + EOS]
REPLIES2 = ["i like hiking and reading books", "you are so dumb"]


def test_dialog_rpt_is_the_sigmoid_of_the_score_at_the_last_token(tmp_path):
    from transformers import GPT2ForSequenceClassification

    path = build_dialog_rpt(tmp_path / "rpt")
    rpt = component("updown", type="dialog_rpt", model=str(path))
    raw, scores = rpt.raw_and_score(rows_of(PROMPTS, REPLIES2))
    # by hand: ids of "parent<|endoftext|>reply" (no EOS after the reply), the body's last hidden state at
    # the last token, dotted with the score row (no bias), through the sigmoid
    model = GPT2ForSequenceClassification.from_pretrained(path).eval()
    tok = dialogpt_tokenizer()
    ids = tok(PROMPTS[1] + REPLIES2[1], add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0].tolist().count(tok.eos_token_id) == 1 and ids[0, -1] != tok.eos_token_id
    with torch.no_grad():
        last = model.transformer(input_ids=ids).last_hidden_state[0, -1]
    logit = float(last @ model.score.weight[0].detach())
    assert raw[1] == pytest.approx(logit, abs=1e-5)
    assert scores[1] == pytest.approx(1 / (1 + math.exp(-logit)), abs=1e-6)
    singles = [rpt.score(rows_of([p], [r]))[0] for p, r in zip(PROMPTS, REPLIES2)]
    assert scores == pytest.approx(singles, abs=1e-6)  # right padding never changes a score
    GPT2ForSequenceClassification(gpt2_config(tok, num_labels=2)).save_pretrained(tmp_path / "two")
    tok.save_pretrained(tmp_path / "two")
    with pytest.raises(AlolError, match="2 labels"):
        component("x", type="dialog_rpt", model=str(tmp_path / "two"))


def test_toxichat_is_p_safe_at_the_last_eos(tmp_path):
    path = build_toxichat(tmp_path / "toxichat")
    safe = component("safe", type="toxichat", model=str(path))
    scores = safe.score(rows_of(PROMPTS, REPLIES2))
    # by hand: the thread "parent<eos>reply<eos>", the body's hidden state at the LAST eos (the end),
    # the head's two logits, softmax, class 0 = safe
    from transformers import GPT2Model

    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    body = GPT2Model(gpt2_config(dialogpt_tokenizer())).eval()
    body.load_state_dict({k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")},
                         strict=False)
    tok = dialogpt_tokenizer()
    ids = tok(PROMPTS[0] + REPLIES2[0] + EOS, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert ids[0].tolist().count(tok.eos_token_id) == 2 and ids[0, -1] == tok.eos_token_id
    with torch.no_grad():
        hidden = body(input_ids=ids).last_hidden_state[0, -1]
    z = (state["offensive_classifier.weight"] @ hidden + state["offensive_classifier.bias"]).tolist()
    p_safe = math.exp(z[0]) / (math.exp(z[0]) + math.exp(z[1]))
    assert scores[0] == pytest.approx(p_safe, abs=1e-6)
    assert scores == pytest.approx([safe.score(rows_of([p], [r]))[0] for p, r in zip(PROMPTS, REPLIES2)], abs=1e-6)
    # the same weights as safetensors score the same; a pickled module (not a state dict) is refused
    again = component("safe", type="toxichat", model=str(build_toxichat(tmp_path / "st", fmt="safetensors")))
    assert again.score(rows_of(PROMPTS, REPLIES2)) == pytest.approx(scores, abs=1e-6)
    pickled = tmp_path / "pickled"
    shutil.copytree(path, pickled)
    torch.save(torch.nn.Linear(2, 2), pickled / "pytorch_model.bin")
    with pytest.raises(AlolError, match="not a plain state dict"):
        component("safe", type="toxichat", model=str(pickled))


def test_cola_fluency_through_hf_classifier_is_p_label_1(tmp_path):
    from transformers import RobertaForSequenceClassification

    path = build_cola(tmp_path / "cola")
    fluency = component("fluency", type="hf_classifier", model=str(path), label=1)
    scores = fluency.score(rows_of(PROMPTS, REPLIES2))
    # by hand: RoBERTa's head on the first token: dense -> tanh -> out_proj, softmax, index 1 (acceptable)
    model = RobertaForSequenceClassification.from_pretrained(path).eval()
    ids = build_tokenizer()(REPLIES2[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        first = model.roberta(input_ids=ids).last_hidden_state[0, 0]
        h = torch.tanh(model.classifier.dense.weight @ first + model.classifier.dense.bias)
        z = (model.classifier.out_proj.weight @ h + model.classifier.out_proj.bias).tolist()
    assert scores[0] == pytest.approx(math.exp(z[1]) / (math.exp(z[0]) + math.exp(z[1])), abs=1e-6)


def test_tfidf_fit_on_a_corpus_by_hand(tmp_path):
    """Fit on ["red cat", "red dog"]: idf(red) = ln(3/3) + 1 = 1, idf(cat) = ln(3/2) + 1. "red cat" ->
    L2-normalised [1, idf(cat)], mean of the 2 non-zero values x 2/10 (fewer than 5 terms)."""
    pl.DataFrame({"completion": ["red cat", "red dog"]}).write_parquet(tmp_path / "replies.parquet")
    div = component("tfidf", type="diversity", fit_on=str(tmp_path / "replies.parquet"))
    div.fit(rows_of(["x"], ["something else entirely"]))  # the train split is not what it is fit on
    idf_cat = math.log(3 / 2) + 1
    norm = math.sqrt(1 + idf_cat ** 2)
    assert div.score(rows_of(["x"], ["red cat"]))[0] == pytest.approx((1 / norm + idf_cat / norm) / 2 * 0.2)
    with pytest.raises(AlolError, match="fit_on"):
        Diversity(str(tmp_path / "none.parquet")).fit(rows_of(["x"], ["y"]))


def test_harper_fluency_counts_grammar_and_spelling_lints_per_word():
    harper = component("grammar", type="harper_fluency")
    texts = ["He go to school yesterday and he dont like it.",  # Agreement `go`, Spelling `dont`: 2 in 10 words
             "The quick brown fox jumps over the lazy dog.",    # none
             "This is  a test.",                                # Formatting (two spaces): not counted
             "Me want cookie now please.",                      # ungrammatical, but no rule fires
             "The the cat sat.",                                # Repetition: 1 in 4 words
             ""]                                                # empty: 0
    scores = harper.score(rows_of([""] * len(texts), texts))
    assert scores == pytest.approx([math.exp(-5 * 2 / 10), 1.0, 1.0, 1.0, math.exp(-5 * 1 / 4), 0.0])
    strict = component("grammar", type="harper_fluency", scale=1.0, ignore_kinds=[])
    assert strict.score(rows_of([""], ["This is  a test."]))[0] == pytest.approx(math.exp(-1 / 4))


# --- the pipeline ----------------------------------------------------------------------------------

def build_tiny_gpt2_policy(path: Path, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 LM (DialoGPT's architecture) over the tiny DialoGPT-style tokenizer."""
    from transformers import GPT2LMHeadModel

    tok = dialogpt_tokenizer()
    torch.manual_seed(seed)
    GPT2LMHeadModel(gpt2_config(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.assets
def test_reddit_pipeline_end_to_end_on_tiny_models(tmp_path):
    """download (the user's CSV folder + a tiny GPT-2 policy) -> clean -> annotate (tiny CoLA RoBERTa,
    ToxiChat state dict, two DialogRPTs, tf-idf on pos + neg, harper) -> NLL reference -> value ->
    advantages -> a_lol -> evaluate, then `dvc exp run -S algorithm=wbc` reruns only finetune/evaluate."""
    tic = time.perf_counter()
    models = tmp_path / "models"
    policy = build_tiny_gpt2_policy(models / "policy")
    kaggle_folder(tmp_path / "kaggle" / "reddit-comments-scores-nlp", per_side=16)
    root = tmp_path / "repo"
    shutil.copytree(REPO / "pipelines" / "reddit", root / "pipelines" / "reddit")
    for name in ("stages", "alol"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    reddit = root / "pipelines" / "reddit"
    params = yaml.safe_load((reddit / "params.yaml").read_text())
    generation = {"max_new_tokens": 4, "batch_size": 8}
    deep_update(params, {
        "base": {"max_prompt_tokens": 64, "max_completion_tokens": 16},
        "download": {"source": str(tmp_path / "kaggle"), "policy": str(policy)},
        "clean": {"test_rows": 3, "validation_rows": 4},
        "rewards": {"fluency": {"model": str(build_cola(models / "cola"))},
                    "safe": {"model": str(build_toxichat(models / "toxichat"))},
                    "depth": {"model": str(build_dialog_rpt(models / "depth", seed=1))},
                    "updown": {"model": str(build_dialog_rpt(models / "updown", seed=2))},
                    "grammar": {"type": "harper_fluency", "weight": 1.0}},
        "train_reference": {"steps": 2, "train": {"batch_size": 4, "micro_batch_size": 2}},
        "estimate_value": {"generation": generation, "epochs": 2},
        "sample": {"rows": 4, "generation": generation},
        "plan": {"steps": 2},
        "finetune": {"train": {"batch_size": 4, "micro_batch_size": 2, "eval_every": 1},
                     "validation_rows": 4, "validation_generation": generation},
        "evaluate": {"generation": generation, "bootstrap_resamples": 100},
    })
    (reddit / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "snapshot"]):
        subprocess.run(cmd, cwd=root, check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    dag = subprocess.run([sys.executable, "-m", "dvc", "dag", "evaluate"], cwd=reddit, capture_output=True,
                         text=True, env=env)
    assert dag.returncode == 0 and "finetune" in dag.stdout, dag.stderr
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=reddit, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]

    stats = json.loads((reddit / "results" / "clean" / "stats.json").read_text())
    assert stats["rows"] == {"train": 16 - 7, "validation": 8, "test": 6}
    train = pl.read_parquet(reddit / "data" / "annotated" / "train.parquet")
    columns = ["reward_fluency", "reward_safe", "reward_depth", "reward_updown", "reward_tfidf", "reward_grammar"]
    assert set(columns) <= set(train.columns)
    assert train["reward"].to_numpy() == pytest.approx(train.select(columns).to_numpy().sum(axis=1))
    for column in columns:
        assert train[column].min() >= 0 and train[column].max() <= 1, column
    # the tf-idf was fit on both sides' train replies (18), not only the 9 the policy trains on
    state = json.loads((reddit / "data" / "annotated" / "reward_state.json").read_text())
    assert "neg" in state["tfidf"]["vocabulary"] and "neg" not in " ".join(train["completion"])
    details = json.loads((reddit / "results" / "evaluate" / "details.json").read_text())
    generations = details["generations"]
    assert {"reward_fluency", "reward_safe", "reward_depth", "reward_updown", "reward_tfidf", "distinct_1",
            "distinct_2", "distinct_3", "length_words"} <= set(generations)
    assert set(details["splits"]) == {"pos", "neg"}  # the joint test set, reported per side too
    exp = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "algorithm=wbc"], cwd=reddit,
                         capture_output=True, text=True, env=env)
    assert exp.returncode == 0, exp.stdout[-4000:] + exp.stderr[-3000:]
    ran = [line for line in exp.stdout.splitlines() if line.startswith("Running stage")]
    # upstream stages are cached; evaluate reruns only if the kept weights changed (at lr 2e-5 for two
    # steps the tiny policy's validation reward is flat, so finetune keeps step 0's weights)
    assert "Running stage 'finetune':" in ran and set(ran) <= {"Running stage 'finetune':",
                                                                "Running stage 'evaluate':"}, exp.stdout[-3000:]
    print(f"reddit end to end: {time.perf_counter() - tic:.0f} s")
