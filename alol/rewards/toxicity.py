"""The Jigsaw toxic-comment BiLSTM (toxic-comment-classifier 0.3.0), ported from Keras to torch.

Embedding(20000, 50) -> bidirectional LSTM(50, all steps) -> max over time -> Dense(50, relu)
-> Dense(6, sigmoid). Input: 100 token ids, padded and truncated at the front like Keras'
`pad_sequences`. Keras runs the LSTM over the padding too (no mask), so we do as well.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alol.core.device import place

LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
MAXLEN = 100


class JigsawBiLSTM(nn.Module):
    def __init__(self, vocab_size: int = 20000, embed_dim: int = 50, hidden: int = 50, num_labels: int = 6):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True, bidirectional=True)
        self.dense = nn.Linear(2 * hidden, 50)
        self.out = nn.Linear(50, num_labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embedding(ids))
        pooled = states.max(dim=1).values
        return torch.sigmoid(self.out(torch.relu(self.dense(pooled))))


def state_dict_from_keras_h5(h5_file) -> dict[str, torch.Tensor]:
    """Keras 3 `model.weights.h5` -> JigsawBiLSTM state dict.

    Keras LSTM gates are ordered i, f, c, o like torch's; kernel (in, 4h) is torch's weight_ih
    transposed, the recurrent kernel likewise; Keras has one bias, torch two (we zero bias_hh).
    """
    import h5py

    with h5py.File(h5_file, "r") as f:
        def var(path: str, i: int) -> torch.Tensor:
            return torch.from_numpy(np.asarray(f[f"layers/{path}/vars/{i}"], dtype=np.float32))

        sd = {"embedding.weight": var("embedding", 0)}
        for keras_dir, suffix in (("forward_layer", ""), ("backward_layer", "_reverse")):
            cell = f"bidirectional/{keras_dir}/cell"
            sd[f"lstm.weight_ih_l0{suffix}"] = var(cell, 0).T.contiguous()
            sd[f"lstm.weight_hh_l0{suffix}"] = var(cell, 1).T.contiguous()
            sd[f"lstm.bias_ih_l0{suffix}"] = var(cell, 2)
            sd[f"lstm.bias_hh_l0{suffix}"] = torch.zeros_like(var(cell, 2))
        sd["dense.weight"], sd["dense.bias"] = var("dense", 0).T.contiguous(), var("dense", 1)
        sd["out.weight"], sd["out.bias"] = var("dense_1", 0).T.contiguous(), var("dense_1", 1)
    return sd


class KerasTextTokenizer:
    """Keras' legacy Tokenizer.texts_to_sequences, from its saved settings and word index."""

    def __init__(self, filters: str, lower: bool, split: str, num_words: int | None, word_index: dict[str, int]):
        self.table = str.maketrans({c: split for c in filters})
        self.lower, self.split, self.num_words, self.word_index = lower, split, num_words, word_index

    def ids(self, text: str) -> list[int]:
        if self.lower:
            text = text.lower()
        words = [w for w in text.translate(self.table).split(self.split) if w]
        ids = (self.word_index.get(w) for w in words)
        return [i for i in ids if i is not None and (self.num_words is None or i < self.num_words)]

    def pad(self, texts: list[str], maxlen: int = MAXLEN) -> torch.Tensor:
        """Keras pad_sequences(padding='pre', truncating='pre'): keep the LAST maxlen ids, left-pad with 0."""
        batch = torch.zeros(len(texts), maxlen, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.ids(text)[-maxlen:]
            if ids:
                batch[row, maxlen - len(ids):] = torch.tensor(ids)
        return batch


class ToxicityClassifier:
    """P(label) for each text, from the converted assets folder."""

    def __init__(self, folder: str | Path, dtype: torch.dtype = torch.float32):
        from safetensors.torch import load_file

        folder = Path(folder)
        self.tokenizer = KerasTextTokenizer(**json.loads((folder / "tokenizer.json").read_text()))
        self.model = JigsawBiLSTM()
        self.model.load_state_dict(load_file(folder / "model.safetensors"))
        self.model = place(self.model.eval(), "toxicity classifier", dtype)

    @torch.inference_mode()
    def probabilities(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """(len(texts), 6) probabilities in LABELS order."""
        device = next(self.model.parameters()).device
        out = [self.model(self.tokenizer.pad(texts[i:i + batch_size]).to(device)).float().cpu()
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), dtype=np.float32)
