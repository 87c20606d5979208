"""Reward components. Each maps (prompt, completion, context) rows to one float per row.

Built-ins (each in [0, 1]):
  safety      1 - P(toxic) of the completion, Jigsaw BiLSTM (toxicity.py)
  positivity  (VADER compound + 1) / 2 of the completion
  relevance   (cosine(MiniLM(context), MiniLM(completion)) + 1) / 2
  diversity   the A-LoL reference's tf-idf score; the vectorizer is fit on train completions
  harper_fluency  exp(-scale * grammar/spelling lints per word), Harper's rule-based checker (offline)
Generic:
  reward_model   sigmoid(logit) of an OASST-style GPT-NeoX reward model on the dialogue (HH)
  hf_classifier  P(label) from any AutoModelForSequenceClassification (hub id or folder); text_pair
                 knowledge: FaithCritic's (knowledge, reply) pair
  dialog_rpt     sigmoid of a DialogRPT ranker's one logit on `turn<eos>...turn<eos>reply` (WoW: the
                 history turns) or prompt + reply (Reddit: `parent<eos>` + reply)
  toxichat       P(safe) of a DialoGPT body + 2-way head read at the last EOS of prompt + reply + EOS
  comet_critic   the COMET critic (comet.py): P(valid) of an ATOMIC (head, relation, tail) triple
  python         `module:function(prompts, completions) -> list[float]`
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np
import torch

from alol.core.device import load_kwargs, place, reward_dtype
from alol.core.errors import AlolError


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

    def __init__(self, fit_on: str = "train"):
        self.vocabulary: dict[str, int] | None = None
        self.idf: np.ndarray | None = None
        self.fit_on = fit_on

    def fit(self, train: RewardInputs) -> None:
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
            from alol.core.stage import console

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
            from alol.tasks.hh import reward_model_text

            model = self._model(rows.split)
            logits = model.score([reward_model_text(t, c, model.eos) for t, c in zip(rows.turns, rows.completions)],
                                 self.batch_size)
        return np.asarray(logits, dtype=np.float64)


class HarperFluency(Component):
    """exp(-scale * lints / words) of the completion, lints from Harper (harper-py), a rule-based
    English grammar, spelling and style checker with a built-in dictionary: offline and deterministic.

    A lint is one problem Harper reports (Spelling, Capitalization, Agreement, Repetition, Grammar,
    WordChoice, ...); the kinds in `ignore_kinds` (spacing and style advice) are not counted. Words are
    whitespace tokens; an empty reply scores 0. With scale 5: one lint in 10 words -> exp(-0.5) = 0.61.
    It catches misspellings, wrong capitalisation, agreement slips and doubled words; it does not judge
    meaning, coherence, relevance or non-English text beyond flagging its words as misspelled, and it
    passes many ungrammatical sentences ("Me want cookie now please." gets no lint)."""

    def __init__(self, scale: float = 5.0, ignore_kinds: tuple[str, ...] = ("Formatting", "Readability", "Style")):
        from harper import Linter

        self.linter, self.scale, self.ignore = Linter(), scale, set(ignore_kinds)

    def lints(self, text: str) -> int:
        return sum(lint.lint_kind not in self.ignore for lint in self.linter.lint(text))

    def score(self, rows: RewardInputs) -> np.ndarray:
        out = np.zeros(len(rows))
        for i, text in enumerate(rows.completions):
            words = len(text.split())
            if words:
                out[i] = np.exp(-self.scale * self.lints(text) / words)
        return out


def _load_tokenizer(source: str, where: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise AlolError(f"{where}.model: no tokenizer with {source!r} ({err}); save the model's tokenizer "
                        "beside its weights (e.g. microsoft/DialoGPT-medium's).") from None
    if tokenizer.eos_token_id is None:
        raise AlolError(f"{where}.model: the tokenizer of {source!r} has no EOS token.")
    return tokenizer


def _right_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return ids, mask


class DialogRPT(Component):
    """sigmoid of a DialogRPT ranker's logit (microsoft/DialogRPT-depth, -updown: GPT-2
    `GPT2ForSequenceClassification` with one label) on the context and the reply as the authors score
    them: `turn<eos>...turn<eos>reply` when the rows have a dialogue history (WoW: the turns after the
    knowledge), else `prompt + reply` (Reddit: the prompt is `parent<|endoftext|>`). The logit is read
    at the last real token of each right-padded row (never found through the pad id, which is EOS
    for GPT-2 and also separates context from reply); inputs are left-truncated to `max_tokens`."""

    def __init__(self, model: str | None, where: str, max_tokens: int = 1024, batch_size: int = 16,
                 dtype: str = "auto"):
        from transformers import GPT2ForSequenceClassification

        if not model:
            raise AlolError(f"{where}.model: dialog_rpt needs a model (e.g. microsoft/DialogRPT-updown).")
        self.tokenizer = _load_tokenizer(model, where)
        try:
            self.model = GPT2ForSequenceClassification.from_pretrained(model, **load_kwargs(reward_dtype(dtype)))
        except (OSError, ValueError) as err:
            raise AlolError(f"{where}.model: could not load {model!r} as a GPT-2 sequence classifier: {err}") from None
        if self.model.config.num_labels != 1:
            raise AlolError(f"{where}.model: {model} has {self.model.config.num_labels} labels; DialogRPT has one "
                            "logit (use hf_classifier for a multi-class model).")
        self.model = place(self.model.eval().requires_grad_(False), f"DialogRPT {model}")
        self.max_tokens, self.batch_size = max_tokens, batch_size

    @torch.inference_mode()
    def logits(self, rows: RewardInputs) -> np.ndarray:
        eos = self.tokenizer.eos_token
        if rows.turns is not None:  # a dialogue history (WoW): turn<eos>...turn<eos>reply, the knowledge left out
            texts = ["".join(t + eos for t in turns) + c for turns, c in zip(rows.turns, rows.completions)]
        else:  # the prompt is the context as the ranker reads it (Reddit: parent<eos>)
            texts = [p + c for p, c in zip(rows.prompts, rows.completions)]
        out = np.zeros(len(texts))
        for start in range(0, len(texts), self.batch_size):
            ids = [x[-self.max_tokens:] for x in
                   self.tokenizer(texts[start:start + self.batch_size], add_special_tokens=False)["input_ids"]]
            input_ids, mask = _right_padded(ids, self.tokenizer.eos_token_id)
            device = self.model.score.weight.device
            hidden = self.model.transformer(input_ids=input_ids.to(device),
                                            attention_mask=mask.to(device)).last_hidden_state
            last = hidden[torch.arange(len(ids), device=device), mask.sum(1).to(device) - 1]
            out[start:start + len(ids)] = self.model.score(last)[:, 0].float().cpu().numpy()
        return out

    def score(self, rows: RewardInputs) -> np.ndarray:
        return self.raw_and_score(rows)[1]

    def raw_and_score(self, rows: RewardInputs) -> tuple[np.ndarray, np.ndarray]:
        logits = self.logits(rows)
        return logits, 1.0 / (1.0 + np.exp(-logits))


def _weights(folder: Path, where: str) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder (or one file): safetensors, or .bin/.pt read with
    torch.load(weights_only=True), which refuses anything but tensors and plain containers."""
    from safetensors.torch import load_file

    files = [folder] if folder.is_file() else (sorted(folder.glob("*.safetensors")) or
                                               sorted([*folder.glob("*.bin"), *folder.glob("*.pt")]))
    if not files:
        raise AlolError(f"{where}.model: {folder} holds no *.safetensors, *.bin or *.pt weights.")
    state = {}
    for f in files:
        if f.suffix == ".safetensors":
            state.update(load_file(f))
        else:
            try:
                loaded = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001  (a pickled model object, not a state dict)
                raise AlolError(f"{where}.model: {f} is not a plain state dict ({str(err)[:200]}); save "
                                "model.state_dict() (or safetensors) instead of a pickled model.") from None
            loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
            if not isinstance(loaded, dict):
                raise AlolError(f"{where}.model: {f} does not hold a state dict of tensors.")
            state.update(loaded)
    return state


class ToxiChat(Component):
    """P(safe) from the ToxiChat offensive classifier (Baheti et al. 2021, the authors' Reddit `safe`
    reward): a DialoGPT (GPT-2) body and a linear 2-way head on the last hidden state of each EOS
    token; the thread `prompt + reply + EOS` (`parent<|endoftext|>reply<|endoftext|>`) is read at its
    LAST EOS, class 0 = safe, softmax. The checkpoint is a plain state dict (safetensors, or a .bin/.pt
    loaded with weights_only=True: no pickled code): the GPT-2 body under `transformer.` (or unprefixed)
    and the head under `head` (null: the only (2, hidden) weight outside the body). `model` is a folder
    with the checkpoint, GPT-2's config.json and the tokenizer."""

    def __init__(self, model: str | None, head: str | None, where: str, max_tokens: int = 1024,
                 batch_size: int = 16, dtype: str = "auto"):
        import json

        from transformers import GPT2Config, GPT2Model

        folder = Path(model or "")
        if not model or not folder.exists():
            raise AlolError(f"{where}.model: toxichat needs a local folder with the classifier's weights, config.json "
                            f"and tokenizer (got {model!r}); it is not on the hub.")
        config_dir = folder if folder.is_dir() else folder.parent
        if not (config_dir / "config.json").exists():
            raise AlolError(f"{where}.model: {config_dir} has no config.json (DialoGPT-medium's GPT-2 config).")
        config = GPT2Config(**{k: v for k, v in json.loads((config_dir / "config.json").read_text()).items()
                               if k not in ("architectures", "model_type", "transformers_version")})
        state = _weights(folder, where)
        prefix = "transformer." if any(k.startswith("transformer.") for k in state) else ""
        body = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith("lm_head.")}
        if head is None:
            heads = sorted(k[:-len(".weight")] for k, v in state.items() if k.endswith(".weight") and
                           not k.startswith(("transformer.", "lm_head.")) and tuple(v.shape) == (2, config.n_embd))
            if len(heads) != 1:
                raise AlolError(f"{where}: found {len(heads)} candidate 2-way heads {heads} in {model}; set `head:` "
                                "to the state-dict prefix of the classifier head.")
            head = heads[0]
        if f"{head}.weight" not in state:
            raise AlolError(f"{where}.head: {model} has no {head}.weight.")
        body = {k: v for k, v in body.items() if not k.startswith(head + ".")}
        self.body = GPT2Model(config)
        missing, unexpected = self.body.load_state_dict(body, strict=False)
        missing = [k for k in missing if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        unexpected = [k for k in unexpected if not k.endswith((".attn.bias", ".attn.masked_bias"))]
        if missing or unexpected:
            raise AlolError(f"{where}.model: the GPT-2 body of {model} does not match its config.json: missing "
                            f"{missing[:4]}, unexpected {unexpected[:4]}.")
        self.head = torch.nn.Linear(config.n_embd, 2, bias=f"{head}.bias" in state)
        self.head.load_state_dict({k[len(head) + 1:]: v for k, v in state.items() if k.startswith(head + ".")})
        self.tokenizer = _load_tokenizer(str(config_dir), where)
        dt = reward_dtype(dtype)
        self.body = place(self.body.eval().requires_grad_(False), f"ToxiChat body {model}", dt)
        self.head = place(self.head.eval().requires_grad_(False), f"ToxiChat head {model}", dt)
        self.max_tokens, self.batch_size = max_tokens, batch_size

    @torch.inference_mode()
    def probabilities(self, rows: RewardInputs) -> np.ndarray:
        """(rows, 2) softmax at the last EOS of each thread."""
        eos = self.tokenizer.eos_token
        texts = [p + c + eos for p, c in zip(rows.prompts, rows.completions)]
        out = np.zeros((len(texts), 2))
        device = self.head.weight.device
        for start in range(0, len(texts), self.batch_size):
            ids = [x[-self.max_tokens:] for x in
                   self.tokenizer(texts[start:start + self.batch_size], add_special_tokens=False)["input_ids"]]
            input_ids, mask = _right_padded(ids, self.tokenizer.eos_token_id)
            hidden = self.body(input_ids=input_ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            last_eos = torch.tensor([max(i for i, t in enumerate(x) if t == self.tokenizer.eos_token_id) for x in ids])
            picked = hidden[torch.arange(len(ids), device=device), last_eos.to(device)]
            out[start:start + len(ids)] = self.head(picked).float().softmax(-1).cpu().numpy()
        return out

    def score(self, rows: RewardInputs) -> np.ndarray:
        return self.probabilities(rows)[:, 0]
