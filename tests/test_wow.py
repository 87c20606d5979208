"""Knowledge-grounded dialogue (WoW / FaithDial): the readers on real-format fixtures written here,
the prompt and its history trimming, the splits of the three tasks, FaithCritic's (knowledge, reply)
pair and DialogRPT on tiny random models with scores worked out by hand, and pipelines/faithdial_wow
through `dvc repro` on tiny random models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from alol.tasks.wow import (WowCleanConfig, build_wow_splits, faithdial_examples, fit_history, load_examples,
                           render_prompt, wow_examples)
from alol.core.errors import AlolError
from alol.rewards.components import RewardInputs
from conftest import REPO, build_tokenizer, deep_update


def wow_dialogue(topic: str) -> dict:
    """One dialogue in parl.ai's wizard_of_wikipedia JSON layout."""
    def wizard(text, checked):
        return {"speaker": "0_Wizard", "text": text, "checked_sentence": checked,
                "checked_passage": {k.replace("_1", ""): topic for k in checked}, "retrieved_passages": [],
                "retrieved_topics": [topic]}

    def apprentice(text):
        return {"speaker": "1_Apprentice", "text": text, "retrieved_passages": [], "retrieved_topics": [topic]}

    return {"chosen_topic": topic, "persona": f"i like {topic}.", "wizard_eval": 5,
            "chosen_topic_passage": [f"{topic} is a thing.", f"{topic} is popular."],
            "dialog": [
                wizard(f"{topic} is a thing people like.", {f"chosen_{topic}_1": f"{topic} is a thing."}),
                apprentice(f"I like {topic} a lot."),
                wizard(f"Yes, {topic} is popular around the world.", {f"chosen_{topic}_2": f"{topic} is popular."}),
                apprentice("Tell me more."),
                wizard("I am not sure.", {"no_passages_used": "no_passages_used"}),
                apprentice("Ok."),
                wizard(f"Well, {topic} is a thing.", {f"chosen_{topic}_1": f"{topic} is a thing."}),
                apprentice("Bye."),
                wizard("Bye!", {}),
            ]}


def faithdial_dialogue(idx: int) -> dict:
    """One dialogue in FaithDial's data/*.json layout."""
    topic = f"topic{idx}"
    history = [f"hello do you know {topic}", f"yes {topic} is nice", "tell me more"]
    return {"utterances": [
        {"dialog_idx": idx, "history": history[:1], "knowledge": f"{topic} was founded in 1990.",
         "original_response": "i think so", "response": f"{topic} was founded in 1990, I believe.",
         "BEGIN": ["Hallucination"], "VRM": ["Disclosure"]},
        {"dialog_idx": idx, "history": history, "knowledge": f"{topic} has many fans.",
         "original_response": "lots of people", "response": f"It has many fans.",
         "BEGIN": ["Entailment"], "VRM": ["Edification"]},
    ]}


def data_folder(root: Path, n: int = 4) -> Path:
    """wizard_of_wikipedia/ and faithdial/ with n dialogues per file."""
    wow, faith = root / "wizard_of_wikipedia", root / "faithdial"
    wow.mkdir(parents=True), faith.mkdir(parents=True)
    for stem in ("train", "valid_topic_split", "valid_random_split", "test_topic_split"):
        (wow / f"{stem}.json").write_text(json.dumps([wow_dialogue(f"{stem}{i}") for i in range(n)]))
    for k, stem in enumerate(("train", "valid", "test")):
        (faith / f"{stem}.json").write_text(json.dumps([faithdial_dialogue(100 * k + i) for i in range(n)]))
    return root


def test_wow_extraction_follows_the_authors_walk():
    examples = wow_examples([wow_dialogue("Blue")], "fixture")
    # turn 0: a wizard turn with an empty history is skipped; turn 4: no_passages_used; turn 8: no sentence
    assert [e["response"] for e in examples] == ["Yes, Blue is popular around the world.", "Well, Blue is a thing."]
    assert examples[0]["history"] == ["Blue is a thing people like.", "I like Blue a lot."]
    assert examples[0]["knowledge"] == "Blue is popular."
    assert examples[1]["history"] == ["Blue is a thing people like.", "I like Blue a lot.",
                                      "Yes, Blue is popular around the world.", "Tell me more.", "I am not sure.", "Ok."]
    assert len({e["group_id"] for e in examples}) == 1
    with pytest.raises(AlolError, match="no 'dialog' list"):
        wow_examples([{"chosen_topic": "x"}], "bad.json")


def test_faithdial_records_nested_or_flat():
    nested = faithdial_examples([faithdial_dialogue(7)], "fixture")
    flat = faithdial_examples(faithdial_dialogue(7)["utterances"], "fixture")
    assert nested == flat and len(nested) == 2
    assert nested[1] == {"group_id": "faithdial-7", "history": ["hello do you know topic7", "yes topic7 is nice",
                                                                "tell me more"],
                         "knowledge": "topic7 has many fans.", "response": "It has many fans.", "source": "faithdial"}
    with pytest.raises(AlolError, match="lacks"):
        faithdial_examples([{"history": []}], "bad.json")


def test_prompt_and_oldest_first_trimming(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token
    assert render_prompt("K is k.", ["hi", "hello"], "<|endoftext|>") == \
        "Knowledge: K is k.<|endoftext|>hi<|endoftext|>hello<|endoftext|>"
    history = ["what do you like to do for fun", "i like hiking and reading books", "the weather is nice"]
    count = lambda turns: len(tiny_tokenizer(render_prompt("k", turns, eos), add_special_tokens=False)["input_ids"])  # noqa: E731
    assert fit_history("k", history, tiny_tokenizer, count(history)) == (history, True)
    # one token fewer than the whole: the oldest turn goes, the newest two stay
    assert fit_history("k", history, tiny_tokenizer, count(history) - 1) == (history[1:], True)
    assert fit_history("k", history, tiny_tokenizer, count(history[2:])) == (history[2:], True)
    # nothing fits: the last turn stays and the row is flagged
    assert fit_history("k", history, tiny_tokenizer, 2) == (history[2:], False)


@pytest.mark.parametrize("dataset,train,validation", [
    ("wow", {"wow": 8}, {"wow": 8}),
    ("faithdial", {"faithdial": 8}, {"faithdial": 8}),
    ("faithdial_wow", {"wow": 8, "faithdial": 8}, {"wow": 8, "faithdial": 8}),
])
def test_the_three_tasks_splits(tmp_path, tiny_tokenizer, dataset, train, validation):
    raw = load_examples(data_folder(tmp_path), dataset)
    frames, stats = build_wow_splits(raw, tiny_tokenizer, WowCleanConfig(dataset=dataset, max_prompt_tokens=400), 901)
    assert stats["sources"] == {"train": train, "validation": validation, "test": {"faithdial": 8}}
    test = frames["test"].row(0, named=True)
    assert test["knowledge"] == "topic200 was founded in 1990."  # the test split is FaithDial test in all three
    assert test["prompt"] == f"Knowledge: topic200 was founded in 1990.{tiny_tokenizer.eos_token}hello do you know " \
                             f"topic200{tiny_tokenizer.eos_token}"
    assert test["turns"] == ["hello do you know topic200"] and test["context"] == "hello do you know topic200"
    if dataset == "faithdial_wow":  # the union is shuffled: both sources appear within the first rows
        assert set(frames["train"]["source"].head(6)) == {"wow", "faithdial"}
        again, _ = build_wow_splits(raw, tiny_tokenizer, WowCleanConfig(dataset=dataset), 901)
        assert again["train"]["prompt"].to_list() == frames["train"]["prompt"].to_list()  # seeded


def build_roberta_tokenizer(path: Path | None = None):
    """A RoBERTa tokenizer over the tiny BPE vocabulary, specials first (<s> 0, <pad> 1, </s> 2, <unk> 3),
    so that pairs encode as <s> a </s></s> b </s>, like roberta-large-faithcritic's."""
    from transformers import RobertaTokenizer

    model = json.loads(build_tokenizer().backend_tokenizer.to_str())["model"]
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for token, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    tok = RobertaTokenizer(vocab=vocab, merges=[tuple(m) for m in model["merges"]])
    if path is not None:
        tok.save_pretrained(path)
    return tok


def build_tiny_roberta_classifier(path: Path, num_labels: int = 2, seed: int = 0) -> Path:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    tok = build_roberta_tokenizer(path)
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=514, pad_token_id=tok.pad_token_id,
                           bos_token_id=0, eos_token_id=2, num_labels=num_labels,
                           initializer_range=0.3)  # wide: scores far from 0.5, so pairs differ clearly
    RobertaForSequenceClassification(config).save_pretrained(path)
    return path


def build_tiny_dialogrpt(path: Path, seed: int = 0) -> Path:
    """A random 2-layer GPT2ForSequenceClassification with one logit, DialogRPT's architecture."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = build_tokenizer(path)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=256, num_labels=1,
                        initializer_range=0.3,
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    GPT2ForSequenceClassification(config).save_pretrained(path)
    return path


def build_tiny_gpt2(path: Path, seed: int = 0) -> Path:
    """DialoGPT's architecture (GPT2LMHeadModel), 2 layers, over the tiny tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer(path)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_faithcritic_scores_the_knowledge_reply_pair_by_hand(tmp_path):
    from transformers import RobertaForSequenceClassification

    from alol.rewards import build_component, reward_config

    path = build_tiny_roberta_classifier(tmp_path / "faithcritic")
    cfg = reward_config("faithdial", {"type": "hf_classifier", "model": str(path), "label": 0, "text_pair": "knowledge"})
    critic = build_component("faithdial", cfg, tmp_path, "rewards.faithdial")
    knowledge = ["the weather is nice", "i like hiking and reading books today"]
    replies = ["hello there", "you are so dumb"]
    rows = RewardInputs(prompts=["p", "p"], completions=replies, contexts=["c", "c"], knowledge=knowledge)
    scores = critic.score(rows)
    # by hand: <s> knowledge </s></s> reply </s>, one pair at a time (no padding), softmax index 0
    tok, model = build_roberta_tokenizer(), RobertaForSequenceClassification.from_pretrained(path).eval()
    for i in range(2):
        ids = [0] + tok(knowledge[i], add_special_tokens=False)["input_ids"] + [2, 2] + \
            tok(replies[i], add_special_tokens=False)["input_ids"] + [2]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
        expected = float(torch.exp(logits[0]) / torch.exp(logits).sum())
        assert scores[i] == pytest.approx(expected, abs=1e-6)
    # the pair order matters: (reply, knowledge) is another input
    swapped = critic.score(RewardInputs(["p", "p"], knowledge, ["c", "c"], knowledge=replies))
    assert np.abs(swapped - scores).max() > 1e-3
    with pytest.raises(AlolError, match="knowledge"):
        critic.score(RewardInputs(["p"], ["x"], ["c"]))


def test_dialogrpt_scores_the_history_and_reply_by_hand(tmp_path):
    from transformers import GPT2ForSequenceClassification

    from alol.rewards import build_component, reward_config

    path = build_tiny_dialogrpt(tmp_path / "depth")
    depth = build_component("depth", reward_config("depth", {"type": "dialog_rpt", "model": str(path)}), tmp_path,
                            "rewards.depth")
    turns = [["hello there how are you", "i am fine thanks"], ["what do you like to do for fun"]]
    replies = ["the weather is nice", "i like hiking"]
    raw, scores = depth.raw_and_score(RewardInputs(["p", "p"], replies, ["c", "c"], turns=turns))
    tok, model = build_tokenizer(), GPT2ForSequenceClassification.from_pretrained(path).eval()
    eos = tok.eos_token_id
    for i in range(2):  # by hand: turn<eos>turn<eos>reply, the score head on the last token's state
        ids = [x for t in turns[i] for x in tok(t, add_special_tokens=False)["input_ids"] + [eos]] + \
            tok(replies[i], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            last = model.transformer(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        logit = float(last @ model.score.weight[0])  # DialogRPT's head has no bias
        assert raw[i] == pytest.approx(logit, abs=1e-5)
        assert scores[i] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)
    # without a history (Reddit) the prompt is the context as the ranker reads it: the same input, the same score
    prompts = ["".join(t + tok.eos_token for t in history) for history in turns]
    assert depth.raw_and_score(RewardInputs(prompts, replies, ["c", "c"]))[0] == pytest.approx(raw, abs=1e-6)


@pytest.mark.assets
def test_faithdial_wow_pipeline_end_to_end_on_tiny_models(tmp_path):
    """download (a local folder) -> clean (WoW + FaithDial) -> annotate (tiny CoLA, FaithCritic, DialogRPT,
    tf-idf) -> NLL reference (tiny GPT-2) -> value -> advantages -> a_lol (validated on FaithCritic) ->
    evaluate with coverage and density."""
    models = tmp_path / "models"
    cola = build_tiny_roberta_classifier(models / "cola", seed=1)
    faithcritic = build_tiny_roberta_classifier(models / "faithcritic", seed=2)
    depth = build_tiny_dialogrpt(models / "depth")
    policy = build_tiny_gpt2(models / "dialogpt")
    source = data_folder(tmp_path / "raw", n=3)

    root = tmp_path / "repo"
    shutil.copytree(REPO / "pipelines" / "faithdial_wow", root / "pipelines" / "faithdial_wow")
    for name in ("stages", "alol"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    task = root / "pipelines" / "faithdial_wow"
    params = yaml.safe_load((task / "params.yaml").read_text())
    deep_update(params, {
        "base": {"max_prompt_tokens": 96, "max_completion_tokens": 16},
        "download": {"policy": str(policy), "source": str(source)},
        "rewards": {"fluency": {"model": str(cola)}, "faithdial": {"model": str(faithcritic)},
                    "depth": {"model": str(depth)}},
        "train_reference": {"steps": 2, "train": {"batch_size": 4, "micro_batch_size": 2}},
        "estimate_value": {"generation": {"max_new_tokens": 4, "num_beams": 1}, "epochs": 2},
        "plan": {"steps": 2},
        "finetune": {"train": {"batch_size": 4, "micro_batch_size": 2, "eval_every": 1},
                     "validation_rows": 4, "validation_generation": {"max_new_tokens": 4, "num_beams": 1}},
        "evaluate": {"generation": {"max_new_tokens": 4, "num_beams": 1}, "bootstrap_resamples": 100},
    })
    (task / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "snapshot"]):
        subprocess.run(cmd, cwd=root, check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    dag = subprocess.run([sys.executable, "-m", "dvc", "dag"], cwd=task, capture_output=True, text=True, env=env)
    assert dag.returncode == 0 and "finetune" in dag.stdout, dag.stderr
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=task, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]

    clean = json.loads((task / "results" / "clean" / "stats.json").read_text())
    # 3 dialogues per file: WoW 2 examples each, FaithDial 2 records each
    assert clean["rows"] == {"train": 12, "validation": 12, "test": 6}
    train = pl.read_parquet(task / "data" / "annotated" / "train.parquet")
    components = ["reward_fluency", "reward_faithdial", "reward_depth", "reward_tfidf"]
    assert train["reward"].to_numpy() == pytest.approx(train.select(components).sum_horizontal().to_numpy())
    details = json.loads((task / "results" / "evaluate" / "details.json").read_text())
    for side in ("generations", "gold"):
        assert {"coverage", "density", "distinct_1", "distinct_2", "distinct_3", "length_words",
                *components} <= set(details[side])
    # gold FaithDial test replies copy their knowledge: "topicN was founded in 1990, I believe." over
    # "topicN was founded in 1990." is one fragment of 4 of 6 tokens ("1990," differs from "1990.")
    from alol.evaluation.metrics import coverage_density

    test = pl.read_parquet(task / "data" / "annotated" / "test.parquet")
    expected = np.mean([coverage_density(r, k)[0] for r, k in zip(test["completion"], test["knowledge"])])
    assert details["gold"]["coverage"] == pytest.approx(expected)
    validation = task / "results" / "finetune" / "live" / "plots" / "metrics" / "validation" / "reward.tsv"
    assert len(validation.read_text().splitlines()) >= 3  # validated on FaithCritic at the start and each step
