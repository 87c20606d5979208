"""Reward components: the Jigsaw port against Keras, hand-computed tf-idf, generic components."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from alol.rewards import column
import torch

from alol.core.errors import AlolError
from alol.rewards import REWARD_TYPES, RewardFunction, reward_config, reward_configs
from alol.rewards.components import RewardInputs
from alol.rewards.diversity import Diversity
from alol.rewards.toxicity import KerasTextTokenizer

FIXTURES = Path(__file__).parent / "fixtures"


def rows(completions, contexts=None, prompts=None) -> RewardInputs:
    n = len(completions)
    return RewardInputs(prompts or ["p"] * n, list(completions), contexts or ["c"] * n)


@pytest.mark.assets
def test_jigsaw_port_reproduces_keras(real_assets):
    from alol.rewards.toxicity import ToxicityClassifier

    ref = json.loads((FIXTURES / "jigsaw_keras_reference.json").read_text())
    assert len(ref["texts"]) >= 5
    got = ToxicityClassifier(real_assets / "toxicity").probabilities(ref["texts"])
    np.testing.assert_allclose(got, np.array(ref["probabilities"]), atol=1e-5, rtol=0)


@pytest.mark.assets
def test_builtin_components_on_real_assets(real_assets):
    configs = {name: reward_config(name, {}) for name in ("safety", "positivity", "relevance")}
    reward = RewardFunction(configs, real_assets)
    out = reward(rows(["You are so dumb and stupid!", "What a lovely day, I love it!"],
                      contexts=["hello", "What a lovely day, I love it!"]))
    assert out["reward_safety"][0] < 0.05 and out["reward_safety"][1] > 0.5
    assert out["reward_positivity"][1] > out["reward_positivity"][0]
    assert out["reward_relevance"][1] == pytest.approx(1.0, abs=1e-5)  # identical texts: cosine 1 -> 1.0
    for name in configs:
        assert ((out[f"reward_{name}"] >= 0) & (out[f"reward_{name}"] <= 1)).all()


def test_keras_tokenizer_filters_lowercases_and_pads_at_the_front():
    tok = KerasTextTokenizer(filters="!,.", lower=True, split=" ", num_words=4,
                             word_index={"hello": 1, "world": 2, "big": 3, "rare": 7})
    # "rare" has id 7 >= num_words: dropped, like Keras; "unknown" is not in the index
    assert tok.ids("Hello, WORLD! rare unknown big.") == [1, 2, 3]
    padded = tok.pad(["hello world", "big " * 5], maxlen=3)
    assert padded.tolist() == [[0, 1, 2], [3, 3, 3]]


def test_diversity_tfidf_by_hand():
    div = Diversity()
    div.fit(rows(["cat dog", "cat"]))
    # smooth idf: ln((1 + n) / (1 + df)) + 1 with n = 2 documents
    idf_cat, idf_dog = math.log(3 / 3) + 1, math.log(3 / 2) + 1
    norm = math.sqrt(idf_cat ** 2 + idf_dog ** 2)
    cat_dog = (idf_cat / norm + idf_dog / norm) / 2 * (2 / 10)  # 2 non-zero terms (< 5): times 2/10
    cat = 1.0 * (1 / 10)
    got = div.score(rows(["cat dog", "cat", "bird"]))
    np.testing.assert_allclose(got, [cat_dog, cat, 0.0], atol=1e-12)
    assert cat_dog == pytest.approx(0.139455, abs=1e-6)
    # state round-trips through JSON
    again = Diversity()
    again.load_state(json.loads(json.dumps(div.state())))
    np.testing.assert_allclose(again.score(rows(["cat dog"])), [cat_dog])


def _python_reward(tmp_path, monkeypatch, body: str) -> RewardFunction:
    (tmp_path / "user_reward.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_reward", None)
    settings = {"mine": {"type": "python", "function": "user_reward:score", "weight": 2.0},
                "len": {"type": "python", "function": "user_reward:length", "weight": 0.5}}
    return RewardFunction(reward_configs({"rewards": settings}), assets=tmp_path)


def test_python_reward_and_weighted_sum(tmp_path, monkeypatch):
    reward = _python_reward(tmp_path, monkeypatch, "def score(p, c):\n    return [0.25] * len(c)\n"
                                                   "def length(p, c):\n    return [len(x) for x in c]\n")
    out = reward(rows(["ab", "abcd"]))
    np.testing.assert_allclose(out["reward_mine"], [0.25, 0.25])
    np.testing.assert_allclose(out["reward"], [2.0 * 0.25 + 0.5 * 2, 2.0 * 0.25 + 0.5 * 4])
    assert reward.columns == ["reward_mine", "reward_len", "reward"]


def test_python_reward_wrong_count_is_a_clear_error(tmp_path, monkeypatch):
    reward = _python_reward(tmp_path, monkeypatch, "def score(p, c):\n    return [1.0]\n"
                                                   "def length(p, c):\n    return [1.0] * len(c)\n")
    with pytest.raises(AlolError, match=r"rewards\.mine.*user_reward:score returned 1 value.*for 3 rows"):
        reward(rows(["a", "b", "c"]))


def test_python_reward_nan_names_the_row(tmp_path, monkeypatch):
    reward = _python_reward(tmp_path, monkeypatch, "def score(p, c):\n    return [1.0, float('nan')]\n"
                                                   "def length(p, c):\n    return [1.0] * len(c)\n")
    with pytest.raises(AlolError, match=r"rewards\.mine: returned nan for row 1 \(prompt_id 'b-id'\) of train\.parquet"):
        reward(rows(["a", "b"]), source="train.parquet", row_ids=["a-id", "b-id"])


def test_unknown_component_lists_valid_types(tmp_path):
    with pytest.raises(AlolError, match=r"rewards\.fluency: unknown reward component type 'fluency'.*Valid types"):
        RewardFunction(reward_configs({"rewards": {"fluency": {}}}), tmp_path)


def test_hf_classifier_on_a_tiny_random_model(tmp_path, tiny_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2, id2label={0: "bad", 1: "good"},
                        label2id={"bad": 0, "good": 1}, pad_token_id=tiny_tokenizer.pad_token_id)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    tiny_tokenizer.save_pretrained(tmp_path / "clf")
    settings = {"type": "hf_classifier", "model": str(tmp_path / "clf"), "label": "good", "text_pair": "context"}
    reward = RewardFunction({"judge": reward_config("judge", settings)}, tmp_path)
    good = reward(rows(["hello there", "you are so dumb"], contexts=["hi", "hi"]))["reward_judge"]
    bad = RewardFunction({"judge": reward_config("judge", {**settings, "label": "bad"})}, tmp_path)(
        rows(["hello there", "you are so dumb"], contexts=["hi", "hi"]))["reward_judge"]
    np.testing.assert_allclose(good + bad, [1.0, 1.0], atol=1e-6)  # P(good) + P(bad) = 1
    with pytest.raises(AlolError, match=r"rewards\.judge\.label: 'neutral' is not a label.*bad.*good"):
        RewardFunction({"judge": reward_config("judge", {**settings, "label": "neutral"})}, tmp_path)


def test_hf_classifier_without_a_trained_head_says_the_reward_is_random(tmp_path, tiny_tokenizer, capsys):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, pad_token_id=tiny_tokenizer.pad_token_id)).save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    settings = {"type": "hf_classifier", "model": str(tmp_path / "base"), "label": 1}
    RewardFunction({"judge": reward_config("judge", settings)}, tmp_path)
    message = " ".join(capsys.readouterr().err.split())
    assert "newly initialised at random, so this reward is random" in message and "classifier" in message


# --- the reward-type registry -------------------------------------------------------------------

def test_a_key_of_another_type_fails_naming_the_valid_keys():
    with pytest.raises(AlolError, match=r"params\.yaml: rewards\.safety: unknown setting\(s\) \['label'\] for a safety "
                                        r"reward \('label' is a setting of hf_classifier\); valid settings of safety "
                                        r"are \['batch_size', 'dtype', 'type', 'weight'\]"):
        reward_configs({"rewards": {"safety": {"label": "x"}}})
    with pytest.raises(AlolError, match=r"rewards\.judge: unknown setting\(s\) \['typo'\] for a hf_classifier reward; "
                                        r"valid settings of hf_classifier are \['batch_size', 'dtype', 'label', 'model'"):
        reward_configs({"rewards": {"judge": {"type": "hf_classifier", "typo": 1}}})
    # a type's own keys pass, with the type's own defaults (the batch sizes the old clamps gave)
    configs = reward_configs({"rewards": {"safety": {}, "rpt": {"type": "dialog_rpt"}, "rm": {"type": "reward_model"},
                                          "critic": {"type": "comet_critic"}, "judge": {"type": "hf_classifier"}}})
    assert [c.batch_size for c in configs.values()] == [256, 16, 8, 64, 64]
    assert configs["critic"].max_tokens == 512
    assert reward_config("safety", {"batch_size": 32}).batch_size == 32  # the user's value, never clamped


def test_comet_critic_refuses_more_tokens_than_roberta_has_positions():
    with pytest.raises(AlolError, match=r"rewards\.critic: max_tokens 1024 is more than RoBERTa's 512 positions"):
        reward_config("critic", {"type": "comet_critic", "max_tokens": 1024})


def test_every_type_declares_its_bounds_and_documents_each_setting():
    import ast
    import dataclasses
    import inspect

    bounds = {name: record.bounds for name, record in REWARD_TYPES.items()}
    # a column's range follows its settings (a clip, a rank; else none): tests/test_column_reward.py
    assert bounds == {**{name: (0.0, 1.0) for name in REWARD_TYPES if name not in ("python", "column")},
                      "python": None, "column": column._bounds}
    assert len({record.config for record in REWARD_TYPES.values()}) == len(REWARD_TYPES)  # one config class each
    for name, record in REWARD_TYPES.items():
        assert {"type", "weight"} <= {f.name for f in dataclasses.fields(record.config)}, name
        body = ast.parse(inspect.getsource(record.config)).body[0].body
        for field, after in zip(body, body[1:] + [None]):
            if isinstance(field, ast.AnnAssign):
                documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                assert documented, f"{name}: {record.config.__name__}.{field.target.id} has no docstring"
        assert all(isinstance(column, str) for column in record.needs(record.config())), name


def test_the_registry_lists_every_type_module_under_its_name():
    import importlib

    import alol.rewards as rewards

    folder = Path(rewards.__file__).parent
    modules = {p.stem: importlib.import_module(f"alol.rewards.{p.stem}") for p in folder.glob("*.py")
               if p.stem != "__init__"}
    typed = {name: m for name, m in modules.items() if hasattr(m, "REWARD_TYPE")}
    assert set(typed) == set(REWARD_TYPES)  # every type module is registered, under its module's name
    assert all(REWARD_TYPES[name] is m.REWARD_TYPE for name, m in typed.items())
    assert len(typed) >= 11  # the types of issue 21's day; the list itself lives only in REWARD_TYPES


def test_asset_and_fit_deps_come_from_the_records():
    from alol.rewards import asset_deps, fit_deps, needed_columns

    default = reward_configs({"rewards": {"safety": {}, "positivity": {}, "relevance": {}, "diversity": {}}})
    assert asset_deps(default) == ["data/assets/toxicity", "data/assets/minilm"]
    assert asset_deps() == ["data/assets/toxicity", "data/assets/minilm"]  # every type's
    assert asset_deps(default, "assets") == ["assets/toxicity", "assets/minilm"]
    reddit = reward_configs({"rewards": {"depth": {"type": "dialog_rpt", "model": "m"},
                                         "tfidf": {"type": "diversity", "fit_on": "data/clean/train_replies.parquet"}}})
    assert asset_deps(reddit) == [] and fit_deps(reddit) == ["data/clean/train_replies.parquet"]
    assert fit_deps(default) == []
    assert needed_columns(default) == ["completion", "context"]
    assert needed_columns(reddit) == ["prompt", "completion"]


def test_only_types_that_fit_have_a_state(tmp_path, monkeypatch):
    (tmp_path / "user_reward.py").write_text("def score(p, c):\n    return [1.0] * len(c)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_reward", None)
    reward = RewardFunction(reward_configs({"rewards": {"mine": {"type": "python", "function": "user_reward:score"},
                                                        "diversity": {}}}), tmp_path)
    state = reward.fit(rows(["cat dog", "cat"]))
    assert list(state) == ["diversity"]
    with pytest.raises(AlolError, match="the diversity reward has no fitted tf-idf state"):
        reward.load_state({})


def test_a_python_reward_gets_the_rows_columns_it_names(tmp_path, monkeypatch):
    """stored_score * 10 + len(context), the columns of each prompt's row, for data and generated replies."""
    import polars as pl

    from alol.rewards.annotate import reward_inputs

    (tmp_path / "user_reward.py").write_text(
        "def agree(prompts, completions, stored_score, context, unused=None):\n"
        "    return [s * 10 + len(c) for s, c in zip(stored_score, context)]\n"
        "def every(prompts, completions, **columns):\n"
        "    every.seen = sorted(columns)\n"
        "    return [float(i.split(':')[1]) for i in columns['prompt_id']]\n"
        "def plain(prompts, completions):\n"
        "    return [len(c) for c in completions]\n"
        "def needs(prompts, completions, knowledge):\n"
        "    return [0.0] * len(completions)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_reward", None)
    frame = pl.DataFrame({"prompt_id": ["t:0", "t:1", "t:2"], "prompt": ["p", "p", "q"], "completion": ["x", "yy", "z"],
                          "context": ["a", "bb", "ccc"], "stored_score": [0.5, 0.25, 1.0]})
    settings = {name: {"type": "python", "function": f"user_reward:{name}"} for name in ("agree", "every", "plain")}
    reward = RewardFunction(reward_configs({"rewards": settings}), tmp_path)
    data = reward(reward_inputs(frame, "train"))
    assert data["reward_agree"].tolist() == [6.0, 4.5, 13.0]  # 0.5 * 10 + 1, 0.25 * 10 + 2, 1.0 * 10 + 3
    assert data["reward_every"].tolist() == [0.0, 1.0, 2.0]
    assert data["reward_plain"].tolist() == [1.0, 2.0, 1.0]  # the old contract: (prompts, completions) only
    assert sys.modules["user_reward"].every.seen == ["context", "prompt_id", "stored_score"]
    generated = reward(reward_inputs(frame, "train", completions=["long reply", "", "abc"]))
    assert generated["reward_agree"].tolist() == [6.0, 4.5, 13.0] and generated["reward_plain"].tolist() == [10, 0, 3]
    # more rows than one scoring block: each block gets its own rows' columns
    many = pl.DataFrame({"prompt_id": [f"t:{i}" for i in range(600)], "prompt": ["p"] * 600,
                         "completion": ["x"] * 600, "context": ["c"] * 600})
    assert reward_function_of(tmp_path, "every")(reward_inputs(many))["reward"].tolist() == list(map(float, range(600)))
    with pytest.raises(AlolError, match=r"rewards\.needs: user_reward:needs takes \['knowledge'\] but these rows have "
                                        r"no such column; their columns: \['context', 'prompt_id', 'stored_score'\]"):
        reward_function_of(tmp_path, "needs")(reward_inputs(frame, "train"))


def reward_function_of(tmp_path, name: str) -> RewardFunction:
    return RewardFunction({name: reward_config(name, {"type": "python", "function": f"user_reward:{name}"})},
                          tmp_path)
