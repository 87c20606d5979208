"""The value study's pieces: R^2, folds by conversation, the ridge baseline."""

import numpy as np
import pytest

from alol.core.errors import AlolError
from alol.tools.value_study import group_folds, r2, ridge_predict


def test_r2_by_hand():
    target = np.array([1.0, 2.0, 3.0])  # mean 2, SST = 1 + 0 + 1 = 2
    assert r2(np.array([1.0, 2.0, 4.0]), target) == pytest.approx(1 - 1 / 2)  # SSE = 1
    assert r2(np.full(3, 2.0), target) == pytest.approx(0.0)  # the mean explains nothing
    assert r2(np.array([3.0, 2.0, 1.0]), target) == pytest.approx(1 - 8 / 2)  # worse than the mean: negative
    assert r2(np.array([1.0, 2.0]), np.array([5.0, 5.0])) == 0.0


def test_folds_keep_conversations_whole_and_cover_every_row():
    groups = ["a", "a", "b", "c", "c", "c", "d", "e"]
    folds = group_folds(groups, 3, seed=0)
    rows = np.concatenate(folds)
    assert sorted(rows.tolist()) == list(range(8))
    for fold in folds:
        inside = {groups[i] for i in fold}
        assert all(groups[j] not in inside for other in folds if other is not fold for j in other)
    assert [f.tolist() for f in group_folds(groups, 3, seed=0)] == [f.tolist() for f in folds]
    with pytest.raises(AlolError, match="5 conversations cannot make 6 folds"):
        group_folds(groups, 6, seed=0)


def test_ridge_recovers_a_linear_signal_and_shrinks_to_the_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = 2.0 * x[:, 0] - x[:, 1] + 0.5
    pred = ridge_predict(x[:150], y[:150], x[150:], alpha=1e-6)
    assert r2(pred, y[150:]) > 0.999
    flat = ridge_predict(x[:150], y[:150], x[150:], alpha=1e12)  # all weight penalised away: the train mean
    assert np.allclose(flat, y[:150].mean(), atol=1e-6)


def test_noise_separation_by_hand():
    import polars as pl

    from alol.tools.value_study import auc, noise_separation

    # clean advantages {1, 3} vs insult {0, 3}: pairs (1>0) (1<3) (3>0) (3=3) -> (1 + 0 + 1 + 0.5) / 4
    assert auc(np.array([1.0, 3.0]), np.array([0.0, 3.0])) == pytest.approx(0.625)
    table = pl.DataFrame({"noise": ["clean", "clean", "insult", "insult"], "advantage": [1.0, 3.0, 0.0, 3.0],
                          "reward": [2.0, 2.0, 1.0, 1.0]})
    out = noise_separation(table)
    assert out["insult"] == {"advantage_auc": 0.625, "reward_auc": 1.0, "positive_fraction": 0.5}
    assert out["clean"] == {"positive_fraction": 1.0}
    with pytest.raises(AlolError, match="no `noise` column"):
        noise_separation(table.drop("noise"))
