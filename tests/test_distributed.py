"""Stages under two real processes write what one process writes; train_reference resumes.

Two processes are started with torchrun on the CPU (gloo), and each stage asserts inside the run
that it runs as two (ALOL_EXPECT_PROCESSES, see conftest.run_stage).
"""

from __future__ import annotations

import json
import signal

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import CORPUS, build_tiny_llama, run_stage

REWARD_MODULE = """
import os
def length(prompts, completions):
    with open(os.environ.get("CALLS_LOG", os.devnull), "a") as log:  # which process scored how many rows
        log.write(f"{os.getpid()} {len(completions)}\\n")
    return [len(c.split()) / 10 for c in completions]
"""
REWARDS = {"length": {"type": "python", "function": "user_rewards:length", "weight": 1.0},
           "judge": {"type": "hf_classifier", "label": "good", "text_pair": "context", "weight": 1.0},
           "diversity": {"weight": 1.0}}


def texts(rng, n, words=(2, 8)):
    vocab = " ".join(CORPUS).split()
    return [" ".join(rng.choice(vocab, rng.integers(*words))) for _ in range(n)]


@pytest.fixture()
def workdir(tmp_path, tiny_tokenizer, monkeypatch):
    from transformers import BertConfig, BertForSequenceClassification

    rng = np.random.default_rng(0)
    clean = tmp_path / "clean"
    clean.mkdir()
    for name, n in (("train", 600), ("validation", 8), ("test", 12)):  # train: 3 scoring blocks of 256 rows
        pl.DataFrame({"prompt_id": [f"{name}:{i}" for i in range(n)], "group_id": [f"g{i}" for i in range(n)],
                      "prompt": texts(rng, n), "completion": texts(rng, n), "context": texts(rng, n)}
                     ).write_parquet(clean / f"{name}.parquet")
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=2, id2label={0: "bad", 1: "good"}, label2id={"bad": 0, "good": 1},
        pad_token_id=tiny_tokenizer.pad_token_id)).save_pretrained(tmp_path / "judge")
    tiny_tokenizer.save_pretrained(tmp_path / "judge")
    build_tiny_llama(tmp_path / "policy", tiny_tokenizer, seed=1)
    build_tiny_llama(tmp_path / "reference", tiny_tokenizer, seed=2)
    (tmp_path / "user_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    rewards = {**REWARDS, "judge": {**REWARDS["judge"], "model": str(tmp_path / "judge")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "base": {"seed": 3, "max_prompt_tokens": 32, "max_completion_tokens": 12}, "model": {"mode": "full"},
        "rewards": rewards,
        "evaluate": {"generation": {"max_new_tokens": 5, "batch_size": 4, "do_sample": True, "top_p": 0.9},
                     "bootstrap_resamples": 100},
        "train_reference": {"steps": 4, "train": {"learning_rate": 1.0e-3, "batch_size": 4, "micro_batch_size": 2,
                                                  "checkpoint_every": 1}}}))
    return tmp_path


def annotate(root, out, processes):
    return run_stage("annotate.py", root / "clean", root / "assets", root / out, root / f"{out}.json",
                     "--params", root / "params.yaml", cwd=root, check=True, processes=processes,
                     env={"CALLS_LOG": str(root / f"{out}.calls")})


def calls(path):
    per_process = {}
    for line in path.read_text().splitlines():
        pid, rows = line.split()
        per_process[pid] = per_process.get(pid, 0) + int(rows)
    return per_process


def test_two_process_annotate_writes_what_one_writes(workdir):
    annotate(workdir, "one", 1)
    two = annotate(workdir, "two", 2)
    assert "on 2 processes" in " ".join(two.stderr.split())
    rows = 600 + 8 + 12
    assert list(calls(workdir / "one.calls").values()) == [rows]
    assert sorted(calls(workdir / "two.calls").values()) == [256, 256 + 88 + 8 + 12]  # train blocks 1 | 0, 2; once
    for split in ("train", "validation", "test"):
        one_table, two_table = (pl.read_parquet(workdir / out / f"{split}.parquet") for out in ("one", "two"))
        assert one_table.columns[-1] == "reward" and one_table.height == two_table.height
        assert one_table.equals(two_table), split
    assert (workdir / "one.json").read_text() == (workdir / "two.json").read_text()
    assert (workdir / "one" / "reward_state.json").read_text() == (workdir / "two" / "reward_state.json").read_text()


def test_two_process_evaluate_writes_what_one_writes(workdir):
    annotate(workdir, "annotated", 1)
    runs = {}
    for processes in (1, 2):
        out = workdir / f"eval-{processes}"
        runs[processes] = run_stage("evaluate.py", workdir / "policy", workdir / "annotated", workdir / "assets", out,
                                    "--reference", workdir / "reference", "--params", workdir / "params.yaml",
                                    cwd=workdir, check=True, processes=processes)
    one, two = (pl.read_parquet(workdir / f"eval-{n}" / "generations.parquet") for n in (1, 2))
    assert one.height == 12 and one["completion"].str.len_chars().sum() > 0
    assert one.equals(two)
    details = [json.loads((workdir / f"eval-{n}" / "details.json").read_text()) for n in (1, 2)]
    for m in details:
        m.pop("generated_tokens_per_second")
    assert details[0] == details[1] and details[0]["generations"]["kl"] > -1e9
    assert (workdir / "eval-1" / "metrics.json").read_text() == (workdir / "eval-2" / "metrics.json").read_text()


def test_train_reference_resumes_after_sigkill(workdir):
    annotated = workdir / "clean"  # train_reference reads prompt and completion only
    (workdir / "assets").mkdir()
    (workdir / "assets" / "policy").symlink_to(workdir / "policy")

    def train_reference(out, checkpoint=None, env=None):
        args = [annotated, workdir / "assets", workdir / out, workdir / f"results-{out}", "--params",
                workdir / "params.yaml"] + (["--checkpoint-dir", workdir / checkpoint] if checkpoint else [])
        return run_stage("train_reference.py", *args, cwd=workdir, env=env)

    assert train_reference("straight").returncode == 0
    killed = train_reference("resumed", "ckpt", {"ALOL_KILL_AFTER_CHECKPOINT": "2"})
    assert killed.returncode == -signal.SIGKILL
    again = train_reference("resumed", "ckpt")
    assert again.returncode == 0 and "resumed from" in again.stdout + again.stderr
    straight, resumed = (load_file(workdir / out / "model.safetensors") for out in ("straight", "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
