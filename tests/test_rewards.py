"""Reward components: the Jigsaw port against Keras, hand-computed tf-idf, generic components."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alol.core.errors import AlolError
from alol.rewards import RewardComponentConfig, RewardFunction
from alol.rewards.components import Diversity, RewardInputs
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
    configs = {name: RewardComponentConfig() for name in ("safety", "positivity", "relevance")}
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
    return RewardFunction({"mine": RewardComponentConfig(type="python", function="user_reward:score", weight=2.0),
                           "len": RewardComponentConfig(type="python", function="user_reward:length", weight=0.5)},
                          assets=tmp_path)


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
        RewardFunction({"fluency": RewardComponentConfig()}, tmp_path)


def test_hf_classifier_on_a_tiny_random_model(tmp_path, tiny_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=2, id2label={0: "bad", 1: "good"},
                        label2id={"bad": 0, "good": 1}, pad_token_id=tiny_tokenizer.pad_token_id)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    tiny_tokenizer.save_pretrained(tmp_path / "clf")
    cfg = RewardComponentConfig(type="hf_classifier", model=str(tmp_path / "clf"), label="good", text_pair="context")
    reward = RewardFunction({"judge": cfg}, tmp_path)
    good = reward(rows(["hello there", "you are so dumb"], contexts=["hi", "hi"]))["reward_judge"]
    bad = RewardFunction({"judge": RewardComponentConfig(**{**cfg.__dict__, "label": "bad"})}, tmp_path)(
        rows(["hello there", "you are so dumb"], contexts=["hi", "hi"]))["reward_judge"]
    np.testing.assert_allclose(good + bad, [1.0, 1.0], atol=1e-6)  # P(good) + P(bad) = 1
    with pytest.raises(AlolError, match=r"rewards\.judge\.label: 'neutral' is not a label.*bad.*good"):
        RewardFunction({"judge": RewardComponentConfig(**{**cfg.__dict__, "label": "neutral"})}, tmp_path)


def test_hf_classifier_without_a_trained_head_says_the_reward_is_random(tmp_path, tiny_tokenizer, capsys):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, pad_token_id=tiny_tokenizer.pad_token_id)).save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    RewardFunction({"judge": RewardComponentConfig(type="hf_classifier", model=str(tmp_path / "base"), label=1)},
                   tmp_path)
    message = " ".join(capsys.readouterr().err.split())
    assert "newly initialised at random, so this reward is random" in message and "classifier" in message
