"""COMET on ATOMIC-10x: the SKD jsonl reader and ATOMIC-2020 test reader on real-format fixtures
written here, the prompt, the seeded PersonX/PersonY names from the `names` package, the critic's
NLI pair, the Keras -> safetensors converter on a tiny Keras-layout H5 whose score is worked out with
numpy, and pipelines/comet through `dvc repro` on tiny random models."""

from __future__ import annotations

import json
import math
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

from alol.tasks.comet import CometCleanConfig, build_comet_splits, read_atomic10x, read_atomic2020_test, render_prompt
from alol.core.errors import AlolError
from alol.rewards.comet import NameSampler, critic_pair, parse_prompt
from alol.rewards.components import RewardInputs
from conftest import REPO, deep_update
from test_wow import build_roberta_tokenizer, build_tiny_gpt2

TRIPLES = [  # ATOMIC10X.jsonl lines (head, relation, tail, split, rec_*, p_valid_model)
    ("PersonX goes to the mall", "xWant", "to buy clothes", "train", 0.93),
    ("PersonX goes to the mall", "xIntent", "to go shopping", "train", 0.88),
    ("PersonX gives PersonY a gift", "xAttr", "generous", "train", 0.97),
    ("PersonX gives PersonY a gift", "oReact", "happy", "train", 0.90),  # not one of the seven: skipped
    ("PersonX bakes a cake", "xNeed", "to buy flour", "train", 0.81),
    ("PersonX bakes a cake", "xEffect", "gets flour on their hands", "train", 0.42),
    ("PersonX loses PersonX's keys", "xReact", "annoyed", "train", 0.95),
    ("PersonX loses PersonX's keys", "HinderedBy", "PersonX has a key finder", "train", 0.33),
    ("PersonX runs a marathon", "xWant", "to rest", "val", 0.91),
    ("PersonX runs a marathon", "xAttr", "athletic", "val", 0.94),
    ("PersonX paints the fence", "xIntent", "to make it look nice", "val", 0.87),
    ("PersonX paints the fence", "xNeed", "to buy paint", "val", 0.86),
    ("PersonX walks the dog", "xEffect", "gets some exercise", "val", 0.90),
    ("PersonX sings a song", "xReact", "happy", "val", 0.84),
    ("PersonX reads a book", "xEffect", "learns something", "test", 0.78),
    ("PersonX reads a book", "xReact", "entertained", "test", 0.89),
    ("PersonX calls PersonY", "xWant", "to talk", "test", 0.92),
]


def atomic10x_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for head, relation, tail, split, p in TRIPLES:
            f.write(json.dumps({"head": head, "relation": relation, "tail": tail, "split": split,
                                "rec_0.5": True, "rec_0.9": p > 0.9, "p_valid_model": p}) + "\n")
    return path


def test_atomic10x_reader_keeps_the_seven_relations(tmp_path):
    raw, skipped = read_atomic10x(atomic10x_file(tmp_path / "ATOMIC10X.jsonl"))
    assert skipped == {"other_relation": 1}
    assert [len(raw[s]) for s in ("train", "validation", "test")] == [7, 6, 3]
    assert raw["train"][0] == {"head": "PersonX goes to the mall", "relation": "xWant", "tail": "to buy clothes",
                               "stored_score": 0.93}
    frames, stats = build_comet_splits(tmp_path, CometCleanConfig(), 901)
    row = frames["train"].row(0, named=True)
    assert row["prompt"] == "<head> PersonX goes to the mall </head> <relation> xWant </relation> [GEN] "
    assert row["completion"] == "to buy clothes" and row["stored_score"] == 0.93
    assert parse_prompt(row["prompt"]) == ("PersonX goes to the mall", "xWant")
    assert render_prompt("a b", "xNeed") == "<head> a b </head> <relation> xNeed </relation> [GEN] "
    (tmp_path / "bad.jsonl").write_text('{"head": "x"}\n')
    with pytest.raises(AlolError, match="bad.jsonl:1"):
        read_atomic10x(tmp_path / "bad.jsonl")


def test_atomic2020_test_one_row_per_head_and_relation(tmp_path):
    (tmp_path / "test.tsv").write_text("PersonX reads a book\txReact\tentertained\n"
                                       "PersonX reads a book\txReact\tbored\n"
                                       "PersonX reads a book\tisAfter\tPersonX buys a book\n"
                                       "PersonX calls PersonY\txWant\tnone\n"
                                       "PersonX calls PersonY\txWant\tto talk\n")
    rows = read_atomic2020_test(tmp_path / "test.tsv")
    assert [(r["head"], r["relation"], r["tail"], r["references"]) for r in rows] == [
        ("PersonX reads a book", "xReact", "entertained", ["entertained", "bored"]),
        ("PersonX calls PersonY", "xWant", "to talk", ["to talk"])]
    assert all(math.isnan(r["stored_score"]) for r in rows)


def test_names_are_real_seeded_and_distinct():
    import importlib.resources

    first = {line.split()[0].capitalize() for g in ("male", "female") for line in
             importlib.resources.files("names").joinpath(f"dist.{g}.first").read_text().splitlines() if line.strip()}
    sampler = NameSampler(seed=901)
    names = sampler.names("PersonX gives PersonY a gift")
    assert len(set(names)) == 3 and set(names) <= first
    assert NameSampler(seed=901).names("PersonX gives PersonY a gift") == names  # deterministic
    others = {tuple(NameSampler(seed=s).names("PersonX gives PersonY a gift")) for s in range(5)}
    assert len(others) > 1  # the seed matters


def test_critic_pair_by_hand():
    assert critic_pair("PersonX gives PersonY a gift", "xWant", "to see PersonY smile", ["Ann", "Bob", "Cy"]) == (
        "Ann gives Bob a gift", "as a result, Ann wants to see Bob smile")
    assert critic_pair("PersonX falls", "HinderedBy", "PersonX is careful", ["Ann", "Bob", "Cy"]) == (
        "Ann falls", "can be hindered by Ann is careful")
    with pytest.raises(AlolError, match="oReact"):
        critic_pair("x", "oReact", "y", ["Ann", "Bob", "Cy"])


# --- the Keras critic: a tiny TFRobertaModel + Dense layers in the Keras 2 H5 layout --------------

def tf_names(layers: int) -> dict[str, tuple[str, bool]]:
    """torch RobertaModel name -> (TF variable name, transposed), written out for the test."""
    p = "tf_roberta_model/roberta/"
    out = {"embeddings.word_embeddings.weight": (p + "embeddings/word_embeddings/weight:0", False),
           "embeddings.position_embeddings.weight": (p + "embeddings/position_embeddings/embeddings:0", False),
           "embeddings.token_type_embeddings.weight": (p + "embeddings/token_type_embeddings/embeddings:0", False),
           "embeddings.LayerNorm.weight": (p + "embeddings/LayerNorm/gamma:0", False),
           "embeddings.LayerNorm.bias": (p + "embeddings/LayerNorm/beta:0", False),
           "pooler.dense.weight": (p + "pooler/dense/kernel:0", True),
           "pooler.dense.bias": (p + "pooler/dense/bias:0", False)}
    for i in range(layers):
        t, k = f"encoder.layer.{i}.", f"{p}encoder/layer_._{i}/"
        for dense in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                      "intermediate.dense", "output.dense"):
            out[t + dense + ".weight"] = (k + dense.replace(".", "/") + "/kernel:0", True)
            out[t + dense + ".bias"] = (k + dense.replace(".", "/") + "/bias:0", False)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            out[t + norm + ".weight"] = (k + norm.replace(".", "/") + "/gamma:0", False)
            out[t + norm + ".bias"] = (k + norm.replace(".", "/") + "/beta:0", False)
    return out


def build_keras_critic(folder: Path, seed: int = 0):
    """A random 1-layer RoBERTa (its config + tokenizer in `folder/base`) and the Keras H5 of the whole
    critic. Returns (h5 path, the torch RobertaModel, the Dense arrays)."""
    import h5py
    from transformers import RobertaConfig, RobertaModel

    tok = build_roberta_tokenizer(folder / "base")
    torch.manual_seed(seed)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, max_position_embeddings=514, pad_token_id=1, bos_token_id=0,
                           eos_token_id=2, initializer_range=0.3)
    config.save_pretrained(folder / "base")
    roberta = RobertaModel(config, add_pooling_layer=True).eval()
    rng = np.random.default_rng(seed)
    dense = {"dense/kernel:0": rng.normal(0, 0.5, (32, 512)).astype(np.float32),
             "dense/bias:0": rng.normal(0, 0.1, 512).astype(np.float32),
             "dense_1/kernel:0": rng.normal(0, 0.1, (512, 1)).astype(np.float32),
             "dense_1/bias:0": np.array([0.3], dtype=np.float32)}
    path = folder / "critic.h5"
    state = roberta.state_dict()
    with h5py.File(path, "w") as f:  # tf.keras 2 `save_weights(... .h5)`: one group per layer
        f.attrs["layer_names"] = [b"tf_roberta_model", b"dropout_37", b"dense", b"dropout_38", b"dense_1"]
        group = f.create_group("tf_roberta_model")
        names = []
        for torch_name, (tf_name, transposed) in tf_names(1).items():
            array = state[torch_name].numpy()
            group.create_dataset(tf_name, data=array.T if transposed else array)
            names.append(tf_name.encode())
        group.attrs["weight_names"] = names
        for layer in ("dropout_37", "dropout_38"):
            f.create_group(layer).attrs["weight_names"] = []
        for layer in ("dense", "dense_1"):
            g = f.create_group(layer)
            for var in ("kernel:0", "bias:0"):
                g.create_dataset(f"{layer}/{var}", data=dense[f"{layer}/{var}"])
            g.attrs["weight_names"] = [f"{layer}/kernel:0".encode(), f"{layer}/bias:0".encode()]
    return path, roberta, dense


def numpy_logit(pooled: np.ndarray, dense: dict) -> np.ndarray:
    """Dense1(GELU(Dense0(pooled))) with the exact (erf) GELU, from the Keras arrays."""
    h = pooled @ dense["dense/kernel:0"] + dense["dense/bias:0"]
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    return (h @ dense["dense_1/kernel:0"] + dense["dense_1/bias:0"])[:, 0]


def numpy_critic(pooled: np.ndarray, dense: dict) -> np.ndarray:
    """The critic's probability: sigmoid of numpy_logit."""
    return 1 / (1 + np.exp(-numpy_logit(pooled, dense)))


def test_keras_critic_converts_and_scores_like_numpy(tmp_path):
    from alol.rewards.comet import CometCritic, convert

    h5, roberta, dense = build_keras_critic(tmp_path)
    folder = convert(h5, str(tmp_path / "base"), tmp_path / "critic")
    critic = CometCritic.from_folder(folder)
    for name, tensor in roberta.state_dict().items():  # every RoBERTa tensor lands where it came from
        assert torch.equal(critic.roberta.state_dict()[name], tensor), name
    tok = build_roberta_tokenizer()
    enc = tok(["Ann goes to the mall", "Ann falls"], ["as a result, Ann wants to buy clothes", "can be hindered by ice"],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = roberta(**enc).pooler_output.numpy().astype(np.float64)
        logits = critic(**enc).numpy()
    probs = 1 / (1 + np.exp(-logits))
    # logits, not probabilities: the tanh-approximate GELU moves these by ~1e-4, a probability by ~1e-5
    assert logits == pytest.approx(numpy_logit(pooled, dense), abs=1e-5)
    assert probs == pytest.approx(numpy_critic(pooled, dense), abs=1e-6)
    assert abs(probs[0] - probs[1]) > 1e-3  # a real spread, not a saturated head
    # a file that does not fit the config is refused
    import h5py

    with h5py.File(h5, "a") as f:
        del f["dense_1"]
    with pytest.raises(AlolError, match="two Dense layers"):
        convert(h5, str(tmp_path / "base"), tmp_path / "bad")


def test_comet_critic_reward_stored_for_data_critic_for_the_rest(tmp_path):
    from alol.rewards import build_component, reward_config

    h5, roberta, dense = build_keras_critic(tmp_path)
    from alol.rewards.comet import convert

    folder = convert(h5, str(tmp_path / "base"), tmp_path / "critic")
    settings = {"type": "comet_critic", "model": str(folder), "seed": 901}
    critic = build_component("critic", reward_config("critic", settings), tmp_path, "rewards.critic")
    prompts = [render_prompt("PersonX gives PersonY a gift", "xAttr"), render_prompt("PersonX bakes a cake", "xNeed")]
    tails = ["generous", "to buy flour"]
    data = RewardInputs(prompts, tails, ["c", "c"], split="train", stored_scores=[0.97, 0.81])
    assert critic.score(data).tolist() == [0.97, 0.81]  # the authors' train reward: p_valid_model
    scored = critic.score(RewardInputs(prompts, tails, ["c", "c"], split="test", stored_scores=[0.97, 0.81]))
    generated = critic.score(RewardInputs(prompts, tails, ["c", "c"], split="validation"))
    assert scored == pytest.approx(generated)
    # by hand: the names of each head, the NLI pair, the pooler, the numpy head
    sampler = NameSampler(901)
    x, y, _ = sampler.names("PersonX gives PersonY a gift")
    pairs = [(f"{x} gives {y} a gift", f"so, {x} is seen as generous")]
    x, _, _ = sampler.names("PersonX bakes a cake")
    pairs.append((f"{x} bakes a cake", f"but before, {x} needed to buy flour"))
    tok = build_roberta_tokenizer()
    expected = []
    for premise, hypothesis in pairs:  # one at a time: no padding
        with torch.no_grad():
            pooled = roberta(**tok(premise, hypothesis, return_tensors="pt")).pooler_output.numpy()
        expected.append(numpy_critic(pooled.astype(np.float64), dense)[0])
    assert scored == pytest.approx(expected, abs=1e-5)


@pytest.mark.assets
def test_comet_pipeline_end_to_end_on_tiny_models(tmp_path):
    """download (a local folder: ATOMIC10X.jsonl, a tiny GPT-2 as comet-distill with its tokenizer apart)
    -> clean -> annotate (p_valid_model for train/validation, the converted tiny critic for test) ->
    NLL reference -> value (critic on the reference's replies) -> a_lol -> evaluate."""
    raw = tmp_path / "raw"
    atomic10x_file(raw / "downloaded" / "ATOMIC10X.jsonl")
    build_tiny_gpt2(raw / "downloaded" / "comet-distill")
    shutil.copytree(raw / "downloaded" / "comet-distill", raw / "downloaded" / "comet-distill-tokenizer")
    h5, _, _ = build_keras_critic(tmp_path / "keras")
    from alol.rewards.comet import convert

    critic = convert(h5, str(tmp_path / "keras" / "base"), tmp_path / "critic")

    root = tmp_path / "repo"
    shutil.copytree(REPO / "pipelines" / "comet", root / "pipelines" / "comet")
    for name in ("stages", "alol"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp"))
    task = root / "pipelines" / "comet"
    params = yaml.safe_load((task / "params.yaml").read_text())
    deep_update(params, {
        "base": {"max_prompt_tokens": 48, "max_completion_tokens": 12},
        "download": {"source": str(raw), "policy": str(raw / "downloaded" / "comet-distill"),
                     "tokenizer": str(raw / "downloaded" / "comet-distill-tokenizer")},
        "rewards": {"critic": {"model": str(critic)}},
        "train_reference": {"steps": 2, "train": {"batch_size": 4, "micro_batch_size": 2}},
        "estimate_value": {"generation": {"max_new_tokens": 4}, "epochs": 2},
        "plan": {"steps": 2},
        "finetune": {"train": {"batch_size": 4, "micro_batch_size": 2, "eval_every": 1},
                     "validation_rows": 4, "validation_generation": {"max_new_tokens": 4}},
        "evaluate": {"generation": {"max_new_tokens": 4}, "bootstrap_resamples": 100},
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
    assert clean["rows"] == {"train": 7, "validation": 6, "test": 3} and clean["dropped"] == {"other_relation": 1}
    train = pl.read_parquet(task / "data" / "annotated" / "train.parquet")
    assert train["reward"].to_list() == [p for _, r, _, s, p in TRIPLES if s == "train" and r != "oReact"]
    test = pl.read_parquet(task / "data" / "annotated" / "test.parquet")
    assert test["reward"].to_list() != [p for *_, s, p in TRIPLES if s == "test"]  # the critic's, not stored
    details = json.loads((task / "results" / "evaluate" / "details.json").read_text())
    assert {"reward_critic", "distinct_1", "distinct_2", "distinct_3", "length_words"} <= set(details["generations"])
    generations = pl.read_parquet(task / "results" / "evaluate" / "generations.parquet")
    assert not any("." in c for c in generations["completion"])  # cut at "."
