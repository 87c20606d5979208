"""The HH task: real-format data (samples of PRO's files and Anthropic's HH-RLHF), prompt and
reward-model formatting checked against hand-written strings, the OASST-layout reward model, and
the whole pipelines/hh DAG through `dvc repro` on tiny random models (QLoRA on CPU)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from alol.tasks.hh import (HHCleanConfig, SYSTEM, clean_hh, hh_rlhf_row, load_hh, read_pro_file, render_prompt,
                          reward_model_text)
from alol.core.errors import AlolError
from conftest import REPO, build_tiny_llama, build_tokenizer, deep_update

DATA = Path(__file__).parent / "data"
TESTS = ["harmless_base", "helpful_base", "helpful_online", "helpful_rejection"]


def lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pro_folder(root: Path) -> dict[str, int]:
    """A folder in PRO's layout from the real samples. train: the dev and test sample lines;
    helpful_rejection (not in the samples): the helpful_online lines. Returns line counts."""
    dev = lines(DATA / "hh_pro" / "hh_dev" / "sampled_dev.json")
    tests = {name: lines(DATA / "hh_pro" / "hh_test" / f"{name}.json") for name in TESTS[:3]}
    tests["helpful_rejection"] = tests["helpful_online"]
    train = dev + [line for name in TESTS[:3] for line in tests[name]]
    for name, rows in [("hh_train_len2/train.json", train), ("hh_dev/sampled_dev.json", dev),
                       *[(f"hh_test/{n}.json", rows) for n, rows in tests.items()]]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {"train": len(train), "validation": len(dev), **{n: len(r) for n, r in tests.items()}}


def test_prompt_rendering_matches_hand_written_strings():
    first = json.loads(lines(DATA / "hh_pro" / "hh_test" / "helpful_base.json")[0])
    turns = first["prefix"][0]
    assert turns == ["<|prompter|>How can I look up how much gas my car can hold?", "<|assistant|>"]
    assert render_prompt(turns) == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions.\n"
        "### Human: How can I look up how much gas my car can hold? ### Assistant:")
    assert render_prompt(turns, "plain") == "\nHuman: How can I look up how much gas my car can hold?\nAssistant: "
    three = ["<|prompter|>Hi", "<|assistant|>Hello!", "<|prompter|>Bye", "<|assistant|>"]
    assert render_prompt(three) == SYSTEM + "### Human: Hi ### Assistant: Hello! ### Human: Bye ### Assistant:"


def test_reward_model_input_matches_hand_written_string():
    first = json.loads(lines(DATA / "hh_pro" / "hh_test" / "helpful_base.json")[0])
    text = reward_model_text(first["prefix"][0], first["suffix"][0], "<|endoftext|>")
    assert text == ("<|prompter|>How can I look up how much gas my car can hold?<|endoftext|>"
                    "<|assistant|>Your car will probably have this information in the owner’s manual, "
                    "or you can look it up on the web.<|endoftext|>")


def test_pro_rows_keep_both_candidates_and_raw_logits():
    rows = read_pro_file(DATA / "hh_pro" / "hh_test" / "helpful_base.json", "helpful_base")
    assert len(rows) == 8
    assert rows[0]["candidates"][1] == "Is this for a road trip?"
    assert rows[0]["candidate_logits"] == pytest.approx([-1.5441417694091797, -1.7714134454727173])
    assert rows[0]["context"] == "How can I look up how much gas my car can hold?"


def test_clean_counts_equal_lines_minus_documented_filters(tmp_path):
    counts = pro_folder(tmp_path)
    raw = load_hh(tmp_path)
    colon = sum(any(c.endswith(":") for c in r["candidates"]) for r in raw["train"])
    assert colon >= 1  # the real dev sample has a reply ending in "concepts:"
    frames, stats = clean_hh(raw, HHCleanConfig())
    assert frames["train"].height == counts["train"] - colon == stats["rows"]["train"]
    assert stats["dropped"] == {"train_colon_ending": colon}
    assert frames["validation"].height == counts["validation"]  # only train is cleaned, as the authors do
    assert frames["test"].height == sum(counts[n] for n in TESTS)
    assert stats["test_rows"] == {n: counts[n] for n in TESTS}
    # the test files are what dev was sampled from: here none of the 12 dev samples is among the
    # 32 test samples; the count is reported either way, and the param removes them
    assert stats["validation_prompts_in_test"] == 0
    frames, stats = clean_hh({**raw, "validation": raw["validation"] + raw["test"][:3]},
                             HHCleanConfig(drop_validation_in_test=True))
    assert stats["dropped"]["validation_in_test"] == 3 and frames["validation"].height == counts["validation"]
    first = frames["train"].row(0, named=True)
    assert first["completion"] == first["candidates"][0] and first["prompt"].endswith("### Assistant:")


def test_hh_rlhf_transcripts_become_the_same_rows(tmp_path):
    item = json.loads(lines(DATA / "hh_rlhf" / "harmless-base-test.jsonl")[0])
    row = hh_rlhf_row(item, "harmless_base", "sample:1")
    assert row["turns"][0] == "<|prompter|>what are some pranks with a pen i can do?"
    assert row["turns"][1] == "<|assistant|>Are you looking for practical joke ideas?"
    assert row["turns"][-1] == "<|assistant|>"
    assert row["candidates"][0] == item["chosen"].rsplit("\n\nAssistant: ", 1)[1]
    assert row["candidates"][1] == item["rejected"].rsplit("\n\nAssistant: ", 1)[1]
    # a folder in Anthropic's layout loads as train/test, split_name from the subset folder
    (tmp_path / "harmless-base").mkdir()
    for split in ("train", "test"):
        with gzip.open(tmp_path / "harmless-base" / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write((DATA / "hh_rlhf" / "harmless-base-test.jsonl").read_text(encoding="utf-8"))
    raw = load_hh(tmp_path)
    assert len(raw["train"]) == len(lines(DATA / "hh_rlhf" / "harmless-base-test.jsonl"))
    assert {r["split_name"] for r in raw["test"]} == {"harmless_base"}


def test_bad_pro_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(lines(DATA / "hh_pro" / "hh_dev" / "sampled_dev.json")[0] + "\n{not json\n")
    with pytest.raises(AlolError, match=r"bad.json:2"):
        read_pro_file(path, "validation")


def build_tiny_reward_model(path: Path, seed: int = 0) -> Path:
    """A random 2-layer GPT-NeoX saved in the OASST layout (gpt_neox.* + out_proj with bias)."""
    from safetensors.torch import save_file
    from transformers import GPTNeoXConfig, GPTNeoXModel

    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=512, eos_token_id=tok.eos_token_id)
    backbone = GPTNeoXModel(config)
    head = torch.nn.Linear(32, 1)
    state = {f"gpt_neox.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    state.update({"out_proj.weight": head.weight.data.contiguous(), "out_proj.bias": head.bias.data.contiguous()})
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, path / "model.safetensors")
    config.architectures = ["GPTNeoXRewardModel"]
    config.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_oasst_layout_reward_model_scores_the_last_token(tmp_path):
    from transformers import GPTNeoXModel

    from alol.rewards.reward_model import RewardModel

    path = build_tiny_reward_model(tmp_path / "rm")
    rm = RewardModel(str(path))
    texts = ["hello there how are you<|im_end|>", "i like hiking<|im_end|>you are so dumb<|im_end|>", "what"]
    batched = rm.score(texts, batch_size=3)
    singles = [rm.score([t])[0] for t in texts]
    assert batched == pytest.approx(singles, abs=1e-5)  # padding never changes a score
    # by hand: the backbone's last-token state through the linear head, from the raw tensors
    from safetensors.torch import load_file

    state = load_file(path / "model.safetensors")
    backbone = GPTNeoXModel.from_pretrained(path).eval()
    ids = rm.tokenizer(texts[1], add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        last = backbone(input_ids=ids).last_hidden_state[0, -1]
    expected = float(last @ state["out_proj.weight"][0] + state["out_proj.bias"][0])
    assert batched[1] == pytest.approx(expected, abs=1e-5)
    # left truncation keeps the end of the dialogue (the reply being scored)
    rm.max_tokens = 3
    assert rm.score([texts[1]])[0] == pytest.approx(rm.score([rm.tokenizer.decode(ids[0, -3:])])[0], abs=1e-5)


@pytest.mark.assets
def test_hh_pipeline_end_to_end_on_tiny_models(tmp_path):
    """download (local zip, PRO layout) -> clean -> annotate (tiny GPT-NeoX RM) -> reference = a LoRA
    adapter on a tiny Llama, continued in QLoRA on CPU -> value -> advantages -> a_lol -> evaluate."""
    from peft import LoraConfig, get_peft_model

    models = tmp_path / "models"
    tok = build_tokenizer()
    build_tiny_llama(models / "llama", tok)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(models / "llama")  # records its path in the adapter config
    adapter = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    adapter.save_pretrained(models / "sft-adapter")  # like timdettmers/qlora-hh-rlhf-7b: no tokenizer inside
    rm = build_tiny_reward_model(models / "rm")
    rm_test = build_tiny_reward_model(models / "rm-test", seed=1)  # the paper's separate (6.9B) test reward model
    counts = pro_folder(tmp_path / "pro" / "data")
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for file in (tmp_path / "pro").rglob("*.json"):
            zf.write(file, file.relative_to(tmp_path / "pro"))

    root = tmp_path / "repo"
    shutil.copytree(REPO / "pipelines" / "hh", root / "pipelines" / "hh")
    for name in ("stages", "alol"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    hh = root / "pipelines" / "hh"
    params = yaml.safe_load((hh / "params.yaml").read_text())
    deep_update(params, {
        "base": {"max_prompt_tokens": 96, "max_completion_tokens": 16},
        "download": {"source": str(archive)},
        "rewards": {"oasst": {"model": str(rm), "test_model": str(rm_test)}},
        "model": {"dtype": "float32", "gradient_checkpointing": False},
        "train_reference": {"source": str(models / "sft-adapter")},
        "estimate_value": {"generation": {"max_new_tokens": 4}, "epochs": 2},
        "plan": {"steps": 2},
        "finetune": {"train": {"batch_size": 4, "micro_batch_size": 2, "eval_every": 1, "checkpoint_every": 1},
                     "validation_generation": {"max_new_tokens": 4}},
        "evaluate": {"generation": {"max_new_tokens": 4}, "bootstrap_resamples": 100},
    })
    (hh / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "snapshot"]):
        subprocess.run(cmd, cwd=root, check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    dag = subprocess.run([sys.executable, "-m", "dvc", "dag"], cwd=hh, capture_output=True, text=True, env=env)
    assert dag.returncode == 0 and "finetune" in dag.stdout, dag.stderr
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=hh, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]

    clean = json.loads((hh / "results" / "clean" / "stats.json").read_text())
    colon = clean["dropped"].get("train_colon_ending", 0)
    assert clean["rows"] == {"train": counts["train"] - colon, "validation": counts["validation"],
                             "test": sum(counts[n] for n in TESTS)}
    train = pl.read_parquet(hh / "data" / "annotated" / "train.parquet")
    # train rewards are sigmoid(stored logit) of candidate 0; candidate_rewards holds both
    logits = torch.tensor([c[0] for c in train["candidate_logits"].to_list()])
    assert train["reward"].to_numpy() == pytest.approx(torch.sigmoid(logits).numpy(), abs=1e-6)
    assert train["candidate_rewards"].list.len().min() == 2
    advantages = pl.read_parquet(hh / "data" / "advantages" / "train.parquet")
    assert advantages.height == 2 * train.height and set(advantages["candidate"]) == {0, 1}
    pairs = pl.read_parquet(hh / "data" / "pairs.parquet")
    assert pairs.height > 0
    assert json.loads((hh / "models" / "policy" / "adapter_config.json").read_text())["r"] == 4  # the SFT adapter, continued
    # validation ran (the start and every step), checkpoints were written and removed after the run
    validation = (hh / "results" / "finetune" / "live" / "plots" / "metrics" / "validation" / "reward.tsv")
    assert len(validation.read_text().splitlines()) >= 3 and not (hh / "data" / "checkpoints" / "finetune").exists()
    # the test split's data replies are scored by the test reward model, like the policies' replies
    from alol.tasks.hh import reward_model_text
    from alol.rewards.reward_model import RewardModel

    test = pl.read_parquet(hh / "data" / "annotated" / "test.parquet")
    scorer = RewardModel(str(rm_test))
    logits = scorer.score([reward_model_text(t, c, scorer.eos) for t, c in zip(test["turns"].to_list(),
                                                                               test["completion"].to_list())])
    assert test["reward"].to_numpy() == pytest.approx(1 / (1 + np.exp(-logits)), abs=1e-6)
    metrics = json.loads((hh / "results" / "evaluate" / "details.json").read_text())
    assert set(metrics["splits"]) == set(TESTS)
    paired = pl.read_parquet(hh / "results" / "evaluate" / "generations.parquet").join(
        pl.read_parquet(hh / "results" / "evaluate_reference" / "generations.parquet"), on="prompt_id")
    for name in TESTS:
        split = metrics["splits"][name]
        assert split["rows"] == counts[name] and 0 <= split["reward"] <= 1
        part = paired.filter(pl.col("split_name") == name)
        assert split["vs_baseline"]["gain"] == pytest.approx((part["reward"] - part["reward_right"]).mean())
