"""`diversity`: the A-LoL reference's tf-idf score of the reply, with a vectorizer fit on train
replies (the one reward type that fits on train data), in [0, 1]."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from alol.core.errors import AlolError
from alol.rewards.components import Component, RewardConfig, RewardInputs, RewardType


@dataclasses.dataclass
class DiversityConfig(RewardConfig):
    fit_on: str = "train"
    """'train' (the train split's completions) or a Parquet file with a `completion` column to
    fit the tf-idf on, relative to the folder dvc runs in (Reddit: the pos + neg train replies)."""


class Diversity(Component):
    """Mean of the response's non-zero tf-idf entries, times (#non-zero)/10 when fewer than 5.

    The vectorizer (scikit-learn's defaults: lowercase, 2+ char word tokens, smooth idf, L2
    norm) is fit on train completions only, then stored as JSON (vocabulary + idf) so that
    later stages score with exactly the same function.
    """

    def __init__(self, fit_on: str = "train"):
        self.vocabulary: dict[str, int] | None = None
        self.idf: np.ndarray | None = None
        self.fit_on = fit_on

    def fit(self, train: RewardInputs, heldout: RewardInputs | None = None) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = train.completions
        if self.fit_on != "train":  # e.g. Reddit: the pos + neg train replies, whichever side is trained on
            import polars as pl

            path = Path(self.fit_on)
            if not path.exists():
                raise AlolError(f"diversity.fit_on: {path} does not exist (a Parquet file with a `completion` "
                                "column, relative to the folder dvc runs in; or 'train').")
            texts = pl.read_parquet(path, columns=["completion"])["completion"].to_list()
        vec = TfidfVectorizer().fit(texts)
        self.vocabulary = {term: int(i) for term, i in vec.vocabulary_.items()}
        self.idf = vec.idf_.astype(np.float64)

    def state(self) -> dict:
        return {"vocabulary": self.vocabulary, "idf": self.idf.tolist()}

    def load_state(self, state: dict | None) -> None:
        if not state:
            raise AlolError("the diversity reward has no fitted tf-idf state: run the annotate stage first.")
        self.vocabulary, self.idf = state["vocabulary"], np.asarray(state["idf"])

    def score(self, rows: RewardInputs) -> np.ndarray:
        from sklearn.feature_extraction.text import CountVectorizer

        if self.vocabulary is None:
            raise AlolError("the diversity reward must be fit on train completions before scoring.")
        counts = CountVectorizer(vocabulary=self.vocabulary).transform(rows.completions).tocsr().astype(np.float64)
        tfidf = counts.multiply(self.idf).tocsr()
        norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
        scores = np.zeros(len(rows))
        for row in range(len(rows)):
            values = tfidf.data[tfidf.indptr[row]:tfidf.indptr[row + 1]] / max(norms[row], 1e-12)
            if len(values):
                scores[row] = values.mean() * (len(values) / 10 if len(values) < 5 else 1.0)
        return scores


REWARD_TYPE = RewardType(
    name="diversity", config=DiversityConfig, bounds=(0.0, 1.0),
    fits="a tf-idf vectorizer (vocabulary, idf) on the train replies, or on the `fit_on` file's",
    fit_files=lambda cfg: () if cfg.fit_on == "train" else (cfg.fit_on,),
    build=lambda cfg, assets, where: Diversity(cfg.fit_on))
