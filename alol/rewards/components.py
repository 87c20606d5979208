"""Reward components. Each maps (prompt, completion, context) rows to one float per row.

Built-ins (each in [0, 1]):
  safety      1 - P(toxic) of the completion, Jigsaw BiLSTM (toxicity.py)
  positivity  (VADER compound + 1) / 2 of the completion
  relevance   (cosine(MiniLM(context), MiniLM(completion)) + 1) / 2
  diversity   the A-LoL reference's tf-idf score; the vectorizer is fit on train completions
Generic:
  reward_model   sigmoid(logit) of an OASST-style GPT-NeoX reward model on the dialogue (HH)
  hf_classifier  P(label) from any AutoModelForSequenceClassification (hub id or folder); text_pair
                 knowledge: FaithCritic's (knowledge, reply) pair
  dialogrpt      sigmoid of a DialogRPT (GPT-2 sequence classifier) logit on `turn<eos>...turn<eos>reply`
  comet_critic   the COMET critic (comet.py): P(valid) of an ATOMIC (head, relation, tail) triple
  python         `module:function(prompts, completions) -> list[float]`
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import torch

from alol.device import load_kwargs, place, reward_dtype
from alol.errors import AlolError


@dataclasses.dataclass
class RewardInputs:
    """The rows to score: parallel lists."""

    prompts: list[str]
    completions: list[str]
    contexts: list[str]
    """The text the completion replies to (the last user turn): what `relevance` compares against."""
    turns: list[list[str]] | None = None
    """Dialogue turns before the completion (HH: PRO's tagged turn strings), for reward models."""
    stored_logits: list[float] | None = None
    """Reward-model logits stored with the data for these very completions (HH), if any."""
    split: str | None = None
    """train / validation / test: a component may score the test split with another model."""
    knowledge: list[str] | None = None
    """The passage a knowledge-grounded reply should be faithful to (WoW / FaithDial), if the task has one."""
    stored_scores: list[float] | None = None
    """A score stored with the data for these very completions (COMET: ATOMIC-10x's p_valid_model), if any."""

    def __len__(self) -> int:
        return len(self.completions)

    def subset(self, rows: list[int]) -> "RewardInputs":
        pick = lambda values: None if values is None else [values[i] for i in rows]  # noqa: E731
        return RewardInputs(pick(self.prompts), pick(self.completions), pick(self.contexts), pick(self.turns),
                            pick(self.stored_logits), self.split, pick(self.knowledge), pick(self.stored_scores))


class Component:
    """Base class: override `score`; `fit` / `state` / `load_state` only if it learns from train data."""

    def fit(self, train: RewardInputs) -> None:
        pass

    def state(self) -> dict | None:
        return None

    def load_state(self, state: dict | None) -> None:
        pass

    def score(self, rows: RewardInputs) -> np.ndarray:
        raise NotImplementedError

    def raw_and_score(self, rows: RewardInputs) -> tuple[np.ndarray | None, np.ndarray]:
        """(raw, score): `raw` is what `score` squashes into its range (a reward model's logit), or
        None when the score is itself raw. PRO's temperature reads the raw scores (spec section 2)."""
        return None, self.score(rows)


class Safety(Component):
    def __init__(self, assets: Path, batch_size: int = 256, dtype: str = "auto"):
        from alol.rewards.toxicity import LABELS, ToxicityClassifier

        self.classifier = ToxicityClassifier(assets / "toxicity", reward_dtype(dtype, small=True))
        self.toxic = LABELS.index("toxic")
        self.batch_size = batch_size

    def score(self, rows: RewardInputs) -> np.ndarray:
        return 1.0 - self.classifier.probabilities(rows.completions, self.batch_size)[:, self.toxic]


class Positivity(Component):
    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, rows: RewardInputs) -> np.ndarray:
        return np.array([(self.analyzer.polarity_scores(t)["compound"] + 1) / 2 for t in rows.completions])


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings (reproduces sentence-transformers' MiniLM)."""

    def __init__(self, folder: str | Path, max_length: int = 256, batch_size: int = 64, dtype: str = "auto"):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = place(AutoModel.from_pretrained(folder).eval(), "sentence encoder", reward_dtype(dtype, small=True))
        self.max_length, self.batch_size = max_length, batch_size

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        order = np.argsort([len(t) for t in texts])  # length-sorted batches: little padding
        out = torch.empty(len(texts), self.model.config.hidden_size)
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.model.device)
            hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[torch.as_tensor(idx)] = torch.nn.functional.normalize(pooled, dim=-1).cpu()
        return out


class Relevance(Component):
    def __init__(self, assets: Path, batch_size: int = 64, dtype: str = "auto"):
        self.encoder = SentenceEncoder(assets / "minilm", batch_size=batch_size, dtype=dtype)

    def score(self, rows: RewardInputs) -> np.ndarray:
        cos = (self.encoder.encode(rows.contexts) * self.encoder.encode(rows.completions)).sum(-1)
        return ((cos.numpy() + 1) / 2).clip(0.0, 1.0)


class Diversity(Component):
    """Mean of the response's non-zero tf-idf entries, times (#non-zero)/10 when fewer than 5.

    The vectorizer (scikit-learn's defaults: lowercase, 2+ char word tokens, smooth idf, L2
    norm) is fit on train completions only, then stored as JSON (vocabulary + idf) so that
    later stages score with exactly the same function.
    """

    def __init__(self):
        self.vocabulary: dict[str, int] | None = None
        self.idf: np.ndarray | None = None

    def fit(self, train: RewardInputs) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer().fit(train.completions)
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


class HFClassifier(Component):
    """P(label) of a sequence classifier on the completion (optionally paired with context or prompt)."""

    def __init__(self, model: str, label: str | int | None, text_pair: str | None, where: str,
                 batch_size: int = 32, max_length: int = 512, trust_remote_code: bool = False, dtype: str = "auto"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if text_pair not in (None, "context", "prompt", "knowledge"):
            raise AlolError(f"{where}.text_pair: {text_pair!r} must be null, 'context', 'prompt' or 'knowledge'.")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
            self.model, info = AutoModelForSequenceClassification.from_pretrained(
                model, trust_remote_code=trust_remote_code, output_loading_info=True,
                **load_kwargs(reward_dtype(dtype)))
        except (OSError, ValueError) as err:
            raise AlolError(f"{where}.model: could not load {model!r} as a sequence classifier: {err}") from None
        if info["missing_keys"]:  # e.g. a base model with no classifier head: transformers made one up
            from alol.cli import console

            console.print(f"[bold yellow]warning[/] {where}.model: {model} has no weights for "
                          f"{sorted(info['missing_keys'])[:4]}: they were newly initialised at random, so this "
                          "reward is random. Use a fine-tuned sequence classifier.", highlight=False)
        self.model.eval()
        self.model = place(self.model, f"classifier {model}")
        labels = self.model.config.id2label
        if self.model.config.num_labels == 1:
            self.label = None  # one logit: P = sigmoid(logit)
        elif isinstance(label, int) and label in labels:
            self.label = label
        elif isinstance(label, str) and label in self.model.config.label2id:
            self.label = self.model.config.label2id[label]
        else:
            raise AlolError(f"{where}.label: {label!r} is not a label of {model}; its labels are {dict(labels)}.")
        self.text_pair, self.batch_size, self.max_length = text_pair, batch_size, max_length

    @torch.inference_mode()
    def score(self, rows: RewardInputs) -> np.ndarray:
        pairs = {"context": rows.contexts, "prompt": rows.prompts, "knowledge": rows.knowledge,
                 None: None}[self.text_pair]
        if self.text_pair == "knowledge" and pairs is None:
            raise AlolError("an hf_classifier with text_pair: knowledge needs a `knowledge` column (the wow task).")
        out = []
        for i in range(0, len(rows), self.batch_size):
            texts = [rows.completions[i:i + self.batch_size]]
            if pairs is not None:  # (context, completion): the classifier judges the reply given what it answers
                texts.insert(0, pairs[i:i + self.batch_size])
            enc = self.tokenizer(*texts, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.model.device)
            logits = self.model(**enc).logits.float()
            probs = torch.sigmoid(logits[:, 0]) if self.label is None else logits.softmax(-1)[:, self.label]
            out.append(probs.cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)


class PythonFunction(Component):
    """A user's `module:function(prompts, completions) -> sequence of floats` (one per row)."""

    def __init__(self, function: str | None, where: str):
        if not function or ":" not in function:
            raise AlolError(f"{where}.function: give 'module:function' (the module importable from the "
                            f"folder you run dvc in), got {function!r}.")
        module_name, attr = function.split(":", 1)
        try:
            self.fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise AlolError(f"{where}.function: cannot import {function!r}: {err}") from None
        self.name, self.where = function, where

    def score(self, rows: RewardInputs) -> np.ndarray:
        values = self.fn(list(rows.prompts), list(rows.completions))
        try:
            values = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise AlolError(f"{self.where}: {self.name} must return numbers, got {str(values)[:80]}") from None
        if values.shape != (len(rows),):
            raise AlolError(f"{self.where}: {self.name} returned {values.size} value(s) of shape {values.shape} "
                            f"for {len(rows)} rows; it must return one float per (prompt, completion).")
        return values


class DialogueRewardModel(Component):
    """sigmoid of a GPT-NeoX reward model's logit on (turns + reply), a separate model for test
    if given (the paper: pythia-1.4B for train/validation, 6.9B for test). With `use_stored_logits`
    the train split's stored logits are used where present (PRO's train file carries the 1.4B's):
    only there, since validation and test must be scored by their own model (test: the 6.9B, so
    that the gold replies and the policies' replies are scored alike)."""

    def __init__(self, model: str, test_model: str | None, max_tokens: int, use_stored_logits: bool, where: str,
                 batch_size: int = 8, dtype: str = "auto"):
        if not model:
            raise AlolError(f"{where}.model: reward_model needs a model (hub id or folder).")
        self.sources = {"default": model, "test": test_model or model}
        self.max_tokens, self.use_stored, self.where, self.batch_size = max_tokens, use_stored_logits, where, batch_size
        self.dtype = reward_dtype(dtype)
        self.models: dict = {}

    def _model(self, split: str | None):
        from alol.rewards.reward_model import RewardModel

        source = self.sources["test" if split == "test" else "default"]
        if source not in self.models:
            self.models[source] = RewardModel(source, self.max_tokens, self.dtype)
        return self.models[source]

    def score(self, rows: RewardInputs) -> np.ndarray:
        return self.raw_and_score(rows)[1]

    def raw_and_score(self, rows: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        logits = self.logits(rows)
        return logits, 1.0 / (1.0 + np.exp(-logits))

    def logits(self, rows: RewardInputs) -> np.ndarray:
        stored = rows.stored_logits
        if self.use_stored and rows.split == "train" and stored is not None and np.all(np.isfinite(stored)):
            logits = np.asarray(stored, dtype=np.float64)
        else:
            if rows.turns is None:
                raise AlolError(f"{self.where}: reward_model scores dialogues; these rows have no `turns` column.")
            from alol.data.hh import reward_model_text

            model = self._model(rows.split)
            logits = model.score([reward_model_text(t, c, model.eos) for t, c in zip(rows.turns, rows.completions)],
                                 self.batch_size)
        return np.asarray(logits, dtype=np.float64)


class DialogRPT(Component):
    """sigmoid of a DialogRPT logit (microsoft/DialogRPT-depth, -updown: GPT2ForSequenceClassification,
    one logit) on the dialogue `turn<eos>turn<eos>...turn<eos>reply`, <eos> its tokenizer's EOS, read at
    the reply's last token, left-truncated to `max_tokens` (the reply is kept). The authors' input for
    WoW: the prompt's history after the knowledge (it ends with EOS) + the reply; turns = that history."""

    def __init__(self, model: str, where: str, max_tokens: int = 1024, batch_size: int = 16, dtype: str = "auto"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not model:
            raise AlolError(f"{where}.model: dialogrpt needs a model (hub id or folder, e.g. microsoft/DialogRPT-depth).")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model, **load_kwargs(reward_dtype(dtype)))
        except (OSError, ValueError) as err:
            raise AlolError(f"{where}.model: could not load {model!r} as a sequence classifier: {err}") from None
        if self.model.config.num_labels != 1 or not hasattr(self.model, "score"):
            raise AlolError(f"{where}.model: {model} is not a one-logit GPT-2-style classifier (DialogRPT).")
        self.model = place(self.model.eval(), f"DialogRPT {model}")
        self.where, self.max_tokens, self.batch_size = where, max_tokens, batch_size

    def text(self, turns: list[str], reply: str) -> str:
        eos = self.tokenizer.eos_token
        return "".join(t + eos for t in turns) + reply

    def score(self, rows: RewardInputs) -> np.ndarray:
        return self.raw_and_score(rows)[1]

    @torch.inference_mode()
    def raw_and_score(self, rows: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        if rows.turns is None:
            raise AlolError(f"{self.where}: dialogrpt reads the dialogue history; these rows have no `turns` column.")
        ids = [self.tokenizer(self.text(t, c), add_special_tokens=False)["input_ids"][-self.max_tokens:] or
               [self.tokenizer.eos_token_id] for t, c in zip(rows.turns, rows.completions)]
        logits = np.zeros(len(ids))
        device = self.model.device
        for start in range(0, len(ids), self.batch_size):
            part = ids[start:start + self.batch_size]
            width = max(len(x) for x in part)
            input_ids = torch.zeros((len(part), width), dtype=torch.long)
            mask = torch.zeros((len(part), width), dtype=torch.long)
            for row, x in enumerate(part):  # right padding: the last real token is at len - 1
                input_ids[row, :len(x)], mask[row, :len(x)] = torch.tensor(x), 1
            out = self.model.base_model(input_ids=input_ids.to(device), attention_mask=mask.to(device))
            last = out.last_hidden_state[torch.arange(len(part), device=device), mask.sum(1).to(device) - 1]
            logits[start:start + len(part)] = self.model.score(last)[:, 0].float().cpu().numpy()
        return logits, 1.0 / (1.0 + np.exp(-logits))
