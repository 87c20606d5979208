"""The `column` reward (a score the data carries), its learned stand-in, the unbounded value head and rft's
filter: hand-worked numbers, and the refusals."""

import math
import re

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from alol.core.errors import AlolError
from alol.rewards import RewardFunction, reward_bounds, reward_config
from alol.rewards import learned
from alol.rewards.column import Column, ColumnConfig, StandInConfig
from alol.rewards.components import RewardInputs
from conftest import REPO, run_stage

WORDS = ("great", "thanks", "bad", "sorry", "!", "?", "you", "no")


class WordCounts:
    """A stand-in encoder: counts of a few words (the real one is MiniLM; the head only sees features)."""

    def encode(self, texts):
        return torch.tensor([[t.lower().count(w) for w in WORDS] for t in texts], dtype=torch.float32)


def column(settings: dict, fake=True) -> Column:
    cfg = reward_config("score", {"type": "column", "column": "score", "stand_in": {}, **settings})
    component = Column(cfg, "unused-assets", "params.yaml: rewards.score")
    if fake:
        component._encoder = WordCounts()
    return component


def rows(replies, scores=None, candidate=0, groups=None, **columns):
    extra = {} if scores is None else {"score": scores}
    if groups is not None:
        extra["group_id"] = groups
    return RewardInputs([f"p{i}" for i in range(len(replies))], list(replies), [f"hi {i}" for i in range(len(replies))],
                        columns={**extra, **columns}, candidate=candidate)


# --- the transforms, by hand -----------------------------------------------------------------------------

def test_log1p_then_zscore_by_hand():
    c = column({"transform": ["log1p", "zscore"]})
    c.fit_transform(np.array([0.0, 1.0, 3.0, 7.0]))
    logs = np.log([1.0, 2.0, 4.0, 8.0])  # ln(1 + x) = 0, ln 2, 2 ln 2, 3 ln 2: mean 1.5 ln 2
    mean, std = 1.5 * math.log(2), math.log(2) * math.sqrt((1.5 ** 2 + 0.5 ** 2) * 2 / 4)
    assert c.steps[1]["mean"] == pytest.approx(mean) and c.steps[1]["std"] == pytest.approx(std)
    assert c.transformed(np.array([0.0, 7.0])) == pytest.approx((logs[[0, 3]] - mean) / std)
    assert c.transformed(np.array([3.0])) == pytest.approx([(2 - 1.5) * math.log(2) / std])


def test_rank_is_the_mid_rank_cdf_of_train_and_clip_applies_last():
    c = column({"transform": ["rank"], "clip": [0.2, 0.9]})
    c.fit_transform(np.array([1.0, 2.0, 2.0, 4.0]))
    # 2: 1 train value below, 2 equal -> (1 + 3) / (2 * 4) = 0.5; 0 -> 0, clipped to 0.2; 5 -> 1, clipped to 0.9;
    # 3: 3 below, none equal -> (3 + 3) / 8 = 0.75
    assert c.transformed(np.array([2.0, 0.0, 5.0, 3.0])).tolist() == pytest.approx([0.5, 0.2, 0.9, 0.75])


def test_transform_errors_name_the_setting():
    with pytest.raises(AlolError, match=r"rewards\.score.*log1p needs every score > -1"):
        column({"transform": ["log1p"]}).fit_transform(np.array([-2.0, 1.0]))
    with pytest.raises(AlolError, match="zscore of a constant"):
        column({"transform": ["zscore"]}).fit_transform(np.array([3.0, 3.0]))
    with pytest.raises(AlolError, match=r"unknown step\(s\) \['sqrt'\]"):
        column({"transform": ["sqrt"]})


def test_bounds_follow_the_settings():
    assert reward_bounds(reward_config("s", {"type": "column", "column": "x", "stand_in": {}})) is None
    assert reward_bounds(reward_config("s", {"type": "column", "column": "x", "stand_in": {}, "transform": ["rank"]})) == (0, 1)
    assert reward_bounds(reward_config("s", {"type": "column", "column": "x", "stand_in": {}, "clip": [-1.0, 2.0]})) == (-1, 2)
    assert reward_bounds(reward_config("s", {"type": "column", "column": "x", "transform": ["log1p"],
                                             "stand_in": {"loss": "regression"}})) is None


# --- the reward-model losses, by hand ----------------------------------------------------------------------

def test_regression_loss_by_hand():
    assert learned.regression_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])).item() == pytest.approx((1 + 4) / 2)


def test_logistic_loss_by_hand():
    # s = 0 with label 1: log(1 + e^0) = ln 2; s = ln 3 with label 0: log(1 + 3) = 2 ln 2; mean 1.5 ln 2
    value = learned.logistic_loss(torch.tensor([0.0, math.log(3)]), torch.tensor([1.0, 0.0]))
    assert value.item() == pytest.approx(1.5 * math.log(2))


def test_bradley_terry_loss_by_hand():
    # -log sigmoid(2 - 0) = log(1 + e^-2); a pair the model gets wrong the other way: log(1 + e^1)
    value = learned.bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert value.item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 2)


def test_auc_by_hand():
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 0.35 beats 0.1 only, 0.8 beats both: 3 of 4 pairs
    assert learned.auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert learned.auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)  # a tie counts half


@pytest.mark.parametrize("kind", learned.LOSSES)
def test_fit_head_learns_each_loss(kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    if kind == "regression":
        data = learned.Rows(x, x @ w + 0.7)
    elif kind == "logistic":
        data = learned.Rows(x, (x @ w > 0).float())
    else:
        other = torch.randn(400, 6, generator=g)
        better = (x @ w > other @ w).unsqueeze(1)
        data = learned.Rows(torch.where(better, x, other), rejected=torch.where(better, other, x))
    head = learned.fit_head(kind, data, l2=1e-4)
    if kind == "regression":
        assert head.weight.tolist() == pytest.approx(w.tolist(), abs=0.02) and head.bias.item() == pytest.approx(0.7, abs=0.02)
    elif kind == "logistic":
        assert learned.auc(learned.predict(kind, head, x), data.y.numpy()) > 0.99
    else:
        assert (learned.predict(kind, head, data.x) > learned.predict(kind, head, data.rejected)).mean() > 0.97


# --- the component ---------------------------------------------------------------------------------------

def scored_data(n, seed):
    rng = np.random.default_rng(seed)
    replies = [" ".join(rng.choice(WORDS, size=rng.integers(2, 8))) for _ in range(n)]
    score = np.array([2.0 * r.count("great") - r.count("sorry") + 0.5 * r.count("!") for r in replies])
    return replies, score + rng.normal(0, 0.1, n)


def test_data_replies_get_the_column_and_new_text_the_learned_reward():
    c = column({"transform": ["zscore"]})
    train, y = scored_data(300, 0)
    held, y_held = scored_data(120, 1)
    c.fit(rows(train, y.tolist()), rows(held, y_held.tolist(), groups=[f"g{i % 30}" for i in range(120)]))
    data = rows(held[:5], y_held[:5].tolist())
    assert c.score(data) == pytest.approx((y_held[:5] - y.mean()) / y.std())  # the data's own, transformed
    new = rows(held[:5], y_held[:5].tolist(), candidate=None)  # the same texts as new replies: the stand-in
    assert c.score(new) == pytest.approx(c.predict(c.features(new)))
    assert not np.allclose(c.score(new), c.score(data))
    report = c.report["report"]
    assert c.report["loss"] == "regression" and report["r2"] > 0.9 and report["rows"] < 120
    assert c.report["l2"] in StandInConfig().l2 and len(c.report["selection"]) == len(StandInConfig().l2)
    # on held-out data replies the learned mean is the column's (transformed) mean, within its CI
    low, high = report["mean_difference_ci"]
    assert low <= 0 <= high and report["mean_learned"] == pytest.approx(report["mean_data"], abs=0.1)
    agreement = c.agreement(rows(held, y_held.tolist()))
    assert agreement["r2"] > 0.9 and "r2_ci" in agreement


def test_a_boolean_column_learns_a_probability():
    train, y = scored_data(300, 2)
    held, y_held = scored_data(80, 3)
    c = column({})
    c.fit(rows(train, (y > 0.5).tolist()), rows(held, (y_held > 0.5).tolist(), groups=[f"g{i % 20}" for i in range(80)]))
    assert c.kind == "logistic" and c.report["report"]["auc"] > 0.9
    p = c.score(rows(held, None, candidate=None))
    assert ((0 <= p) & (p <= 1)).all() and len(set(np.round(p, 3))) > 2  # a probability, not a label
    assert c.score(rows(held[:3], [True, False, True])).tolist() == [1.0, 0.0, 1.0]


def test_preference_pairs_learn_bradley_terry_and_score_every_reply_with_it():
    cfg = reward_config("pair", {"type": "column", "column": None, "stand_in": {}})
    c = Column(cfg, "unused", "params.yaml: rewards.pair")
    c._encoder = WordCounts()
    train, y = scored_data(400, 4)
    held, y_held = scored_data(120, 5)

    def pairs(texts, scores):
        order = [(a, b) if sa > sb else (b, a) for a, b, sa, sb in zip(texts[::2], texts[1::2], scores[::2], scores[1::2])]
        return rows([a for a, _ in order], None, candidates=[[a, b] for a, b in order],
                    groups=[f"g{i % 20}" for i in range(len(order))])

    c.fit(pairs(train, y), pairs(held, y_held))
    assert c.kind == "bradley_terry" and c.on_data == "learned" and c.report["report"]["pairwise_accuracy"] > 0.85
    chosen = pairs(held, y_held)
    assert c.score(chosen) == pytest.approx(c.predict(c.features(chosen)))  # a logit, not the pair's 1


def test_missing_scores_are_dropped_or_an_error():
    frame = pl.DataFrame({"prompt_id": ["a", "b", "c"], "score": [1.0, None, float("nan")]})
    assert column({}).unscorable(frame).tolist() == [False, True, True]
    with pytest.raises(AlolError, match=r"row 1 \(prompt_id 'b'\) has no 'score' score \(2 row\(s\)"):
        column({"missing": "error"}).unscorable(frame)
    with pytest.raises(AlolError, match=r"clean.keep: \[score\]"):
        column({}).unscorable(frame.drop("score"))


def test_a_column_without_a_stand_in_is_refused_before_any_work(tmp_path):
    """Every pipeline scores new text, so a column without its stand-in is refused wherever params are read:
    the first stage DVC runs (download) stops with the message and writes nothing."""
    message = r"rewards\.score: a column reward scores only the data's own replies.*Add `stand_in: \{\}`"
    with pytest.raises(AlolError, match=message):
        reward_config("score", {"type": "column", "column": "score"})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["rewards"] = {"score": {"type": "column", "column": "score"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_stage("download.py", "data/assets", "--params", "params.yaml", cwd=tmp_path)
    assert proc.returncode == 1 and re.search(message, " ".join(proc.stderr.split())), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_fitted_state_round_trips_through_json_and_safetensors(tmp_path):
    import json

    from alol.rewards.annotate import _read_tensors, state_files

    c = column({"transform": ["rank", "zscore"]})
    train, y = scored_data(200, 6)
    held, y_held = scored_data(60, 7)
    c.fit(rows(train, y.tolist()), rows(held, y_held.tolist(), groups=[f"g{i % 10}" for i in range(60)]))
    files = state_files({"score": c.state()}, {f"score.{k}": v for k, v in c.tensors().items()})
    state = files.pop("reward_state.json")
    (tmp_path / "reward_state.json").write_text(json.dumps(state))
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    again = column({"transform": ["rank", "zscore"]})
    again.load_state(json.loads((tmp_path / "reward_state.json").read_text())["score"])
    tensors = _read_tensors(tmp_path, state)
    again.load_tensors({k.split(".", 1)[1]: v for k, v in tensors.items()})
    for probe in (rows(held, y_held.tolist()), rows(held, None, candidate=None)):
        assert again.score(probe) == pytest.approx(c.score(probe))
    (tmp_path / "reward_state.safetensors").write_bytes(b"changed")
    with pytest.raises(AlolError, match="not the file"):
        _read_tensors(tmp_path, state)


def test_annotate_drops_rows_without_a_score_and_reports_the_stand_in(monkeypatch):
    from alol.rewards.annotate import annotate_splits
    from alol.tasks import TASKS

    monkeypatch.setattr(Column, "encoder", property(lambda self: WordCounts()))
    reward = RewardFunction({"score": reward_config("score", {"type": "column", "column": "score", "stand_in": {}})},
                            "unused")

    def frame(n, seed, missing=()):
        replies, y = scored_data(n, seed)
        score = [None if i in missing else float(v) for i, v in enumerate(y)]
        return pl.DataFrame({"prompt_id": [f"{seed}-{i}" for i in range(n)], "group_id": [f"{seed}-{i % 10}" for i in range(n)],
                             "prompt": ["p"] * n, "completion": replies, "context": ["hi"] * n, "score": score})

    splits = {"train": frame(100, 0, missing={3, 4}), "validation": frame(40, 1), "test": frame(30, 2, missing={0})}
    tables, stats, files = annotate_splits(splits, reward, {k: f"{k}.parquet" for k in splits}, TASKS["dataset"])
    assert stats["dropped_missing_score"] == {"train": 2, "test": 1}
    assert tables["train"].height == 98 and tables["test"].height == 29
    assert tables["train"]["reward"].to_list() == pytest.approx(tables["train"]["score"].to_list())
    assert stats["stand_in"]["score"]["report"]["r2"] > 0.8
    assert "tensors_sha256" in files["reward_state.json"] and "reward_state.safetensors" in files


# --- the value head without a range ----------------------------------------------------------------------

def test_unbounded_rewards_get_a_linear_value_head(tmp_path):
    from alol.models.value import ValueConfig, ValueHead, reward_range

    params = {"rewards": {"score": {"type": "column", "column": "x", "stand_in": {}, "transform": ["log1p"]},
                          "safety": {}}}
    assert reward_range(ValueConfig(), params) == (None, None)
    assert reward_range(ValueConfig(), {"rewards": {"safety": {"weight": 2.0}, "positivity": {}}}) == (0.0, 3.0)
    head = ValueHead(8, None, None, heads=2, dropout=0.0, center=3.0, scale=2.0).eval()
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.fill_(-1.5)
    states, mask = torch.randn(2, 4, 8), torch.ones(2, 4)
    assert head(states, mask).tolist() == pytest.approx([3.0 - 2.0 * 1.5] * 2)  # center + scale x score, no sigmoid
    head.save(tmp_path / "v", {})
    again, config = ValueHead.load(tmp_path / "v")
    assert config["low"] is None and again(states, mask).tolist() == pytest.approx(head(states, mask).tolist())


# --- rft: the reward filter ------------------------------------------------------------------------------

def test_rft_keeps_the_rows_at_or_above_the_quantile_for_a_scaled_budget():
    from alol.algorithms import ALGORITHMS, check_algorithm
    from alol.training.plans import PlanConfig, make_plans, reward_filter, select_plan

    reward = np.array([0.1, 0.5, 0.9, 0.3])
    # numpy's linear quantile of [0.1, 0.3, 0.5, 0.9] at 0.5: halfway between 0.3 and 0.5 = 0.4
    kept, threshold = reward_filter(reward, np.ones(4, bool), 0.5)
    assert threshold == pytest.approx(0.4) and kept.tolist() == [1, 2]
    # "at or above": the median of [1, 2, 3] is 2.0 itself, kept; a reply that is not the data's own is never
    kept, threshold = reward_filter(np.array([1.0, 2.0, 3.0, 9.0]), np.array([True, True, True, False]), 0.5)
    assert threshold == 2.0 and kept.tolist() == [1, 2]
    frame = pl.DataFrame({"reward": reward, "advantage": reward - 0.45})
    plans, stats = make_plans(frame, PlanConfig(steps=20, rft_quantile=0.5), batch_size=2, seed=0)
    plan = select_plan(plans, "reward_filtered")
    assert plan.shape == (10, 2) and set(plan.ravel()) == {1, 2}  # 20 steps x 2 / 4 kept
    assert stats["reward_filtered"] == {"quantile": 0.5, "threshold": pytest.approx(0.4), "kept_fraction": 0.5}
    from alol.algorithms.finetune import FinetuneConfig

    assert check_algorithm("rft", FinetuneConfig()) == "reward_filtered"
    assert ALGORITHMS["rft"].loss(logps=torch.tensor([[-1.0, -2.0]]), mask=torch.tensor([[1.0, 1.0]])).item() == 3.0


def test_the_sentence_encoder_encodes_a_list_of_texts_once_for_every_component_that_asks():
    """Relevance and a stand-in encode the same contexts and replies: the second asks get the first's rows."""
    from alol.rewards.relevance import SentenceEncoder

    calls = []
    encoder = object.__new__(SentenceEncoder)  # no model: _encode counted instead
    encoder._recent = {}
    encoder._encode = lambda texts: calls.append(list(texts)) or torch.arange(len(texts), dtype=torch.float32)
    contexts, replies = ["hi", "hello"], ["yes", "no"]
    for _ in range(2):  # relevance, then the stand-in
        assert encoder.encode(contexts).tolist() == [0.0, 1.0] and encoder.encode(replies).tolist() == [0.0, 1.0]
    assert calls == [contexts, replies]
    for i in range(4):  # a few more lists push the oldest out
        encoder.encode([f"t{i}"])
    encoder.encode(contexts)
    assert calls[-1] == contexts and len(calls) == 7
