"""The COMET critic (West et al., symbolic knowledge distillation), ported from the authors' Keras model.

    RoBERTa (roberta-large-mnli) -> pooler output -> dropout -> Dense(512, GELU) -> dropout -> Dense(1, sigmoid)

on an NLI-style pair: (head, f"{phrase} {tail}") with the relation's phrase below, PersonX / PersonY
(PersonZ) replaced by distinct first names from the `names` package (its census lists, read from the
installed package). The authors draw the names at random on every call; here they are drawn from a
generator seeded by (seed, head), so a triple always gets the same score and every tail of one head
is judged with the same names.

A critic folder holds the RoBERTa config and tokenizer, `model.safetensors` (`roberta.*` with the
pooler, `head.dense.*` (512 x hidden), `head.out_proj.*` (1 x 512)) and `critic.json`. Convert the
authors' Keras H5 weights into one:

    python -m alol.rewards.comet convert critic.h5 roberta-large-mnli models/comet-critic
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import random
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alol.core.errors import AlolError

PHRASES = {
    "HinderedBy": "can be hindered by",
    "xNeed": "but before, PersonX needed",
    "xWant": "as a result, PersonX wants",
    "xIntent": "because PersonX wanted",
    "xReact": "as a result, PersonX feels",
    "xAttr": "so, PersonX is seen as",
    "xEffect": "as a result, PersonX",
}
PROMPT = re.compile(r"<head>\s*(.*?)\s*</head>\s*<relation>\s*(.*?)\s*</relation>", re.DOTALL)
PEOPLE = ("PersonX", "PersonY", "PersonZ")


def _name_list(filename: str) -> tuple[list[str], np.ndarray]:
    """A `names` census list: (names, frequencies), read from the installed package at run time."""
    try:
        text = importlib.resources.files("names").joinpath(filename).read_text()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise AlolError(f"the comet_critic reward needs the `names` package (pip install names==0.3.0): {err}") from None
    rows = [line.split() for line in text.splitlines() if line.strip()]
    return [r[0].capitalize() for r in rows], np.array([float(r[1]) for r in rows])


class NameSampler:
    """Distinct first names per head, like names.get_first_name() (a gender at random, then a name with
    probability proportional to its census frequency), from a generator seeded by (seed, head)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.lists = {g: _name_list(f"dist.{g}.first") for g in ("male", "female")}

    def names(self, head: str, count: int = len(PEOPLE)) -> list[str]:
        digest = hashlib.sha256(f"{self.seed}\0{head}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        chosen: list[str] = []
        while len(chosen) < count:
            names, freq = self.lists[rng.choice(("male", "female"))]
            name = rng.choices(names, weights=freq)[0]
            if name not in chosen:
                chosen.append(name)
        return chosen


def critic_pair(head: str, relation: str, tail: str, names: list[str]) -> tuple[str, str]:
    """(premise, hypothesis) = (head, phrase + tail) with PersonX/Y/Z -> names."""
    if relation not in PHRASES:
        raise AlolError(f"comet_critic: relation {relation!r} is not one of {', '.join(PHRASES)}.")

    def fill(text: str) -> str:
        for person, name in zip(PEOPLE, names):
            text = text.replace(person, name)
        return text

    return fill(head), fill(f"{PHRASES[relation]} {tail}")


def parse_prompt(prompt: str) -> tuple[str, str]:
    match = PROMPT.search(prompt)
    if not match:
        raise AlolError(f"comet_critic: the prompt {prompt[:60]!r} is not '<head> ... </head> <relation> ... "
                        "</relation> [GEN] ' (the comet task's).")
    return match.group(1), match.group(2)


class CriticHead(nn.Module):
    """dropout -> Dense(hidden, GELU) -> dropout -> Dense(1) (the sigmoid is applied by the caller)."""

    def __init__(self, in_features: int, hidden: int = 512, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(in_features, hidden)
        self.out_proj = nn.Linear(hidden, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.gelu(self.dense(self.dropout(pooled)))  # exact (erf) GELU, as Keras' default
        return self.out_proj(self.dropout(hidden)).squeeze(-1)


class CometCritic(nn.Module):
    def __init__(self, config, head_hidden: int = 512):
        from transformers import RobertaModel

        super().__init__()
        self.roberta = RobertaModel(config, add_pooling_layer=True)
        self.head = CriticHead(config.hidden_size, head_hidden, config.hidden_dropout_prob)

    def forward(self, **encoded) -> torch.Tensor:
        """The logit (before the sigmoid) of each pair."""
        return self.head(self.roberta(**encoded).pooler_output)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "CometCritic":
        from safetensors.torch import load_file
        from transformers import RobertaConfig

        folder = Path(folder)
        if not (folder / "critic.json").exists():
            raise AlolError(f"{folder}: not a COMET critic folder (no critic.json); convert the authors' Keras "
                            "weights with `python -m alol.rewards.comet convert`.")
        settings = json.loads((folder / "critic.json").read_text())
        model = cls(RobertaConfig.from_pretrained(folder), settings["head_hidden"])
        missing, unexpected = model.load_state_dict(load_file(folder / "model.safetensors"), strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise AlolError(f"{folder}: critic weights do not match (missing {missing[:4]}, unexpected {unexpected[:4]}).")
        return model.eval()


# --- the authors' Keras critic -> safetensors -------------------------------------------------

def _torch_name(keras_name: str) -> tuple[str, bool] | None:
    """A TF RoBERTa variable path (…/roberta/encoder/layer_._3/attention/self/query/kernel:0) -> its
    torch name, and whether the array is transposed (Dense kernels are (in, out); torch is (out, in))."""
    name = keras_name.split(":")[0]
    if "roberta/" not in name:
        return None
    name = name[name.index("roberta/") + len("roberta/"):].replace("layer_._", "layer.").replace("/", ".")
    leaf = name.rsplit(".", 1)
    if leaf[1] == "kernel":
        return leaf[0] + ".weight", True
    if leaf[1] == "gamma":
        return leaf[0] + ".weight", False
    if leaf[1] == "beta":
        return leaf[0] + ".bias", False
    if leaf[1] in ("embeddings", "weight"):  # position/token_type `embeddings`, word_embeddings `weight`
        return leaf[0] + ".weight", False
    return name, False  # bias


def state_dict_from_keras_h5(h5_file) -> dict[str, torch.Tensor]:
    """The authors' Keras critic (tf.keras TFRobertaModel + two Dense layers, saved as H5) -> the state
    dict of CometCritic. RoBERTa variables are found by their TF names anywhere in the file; the two
    Dense layers outside RoBERTa by shape: the (hidden, H) kernel is `head.dense`, the (H, 1) one
    `head.out_proj`."""
    import h5py

    state, dense = {}, []
    with h5py.File(h5_file, "r") as f:
        def visit(path: str, obj) -> None:
            if not isinstance(obj, h5py.Dataset):
                return
            array = np.asarray(obj, dtype=np.float32)
            mapped = _torch_name(path)
            if mapped is not None:
                name, transpose = mapped
                state["roberta." + name] = torch.from_numpy(np.ascontiguousarray(array.T if transpose else array))
            else:
                dense.append((path, array))

        f.visititems(visit)
    kernels = [(p, a) for p, a in dense if p.split(":")[0].endswith("kernel")]
    biases = {p.split(":")[0].rsplit("/", 1)[0]: a for p, a in dense if p.split(":")[0].endswith("bias")}
    if len(kernels) != 2:
        raise AlolError(f"expected two Dense layers outside RoBERTa in the Keras file, found {len(kernels)} kernels "
                        f"({[p for p, _ in kernels]}).")
    kernels.sort(key=lambda pa: pa[1].shape[1] == 1)  # hidden layer first, the (H, 1) output layer last
    for (path, kernel), name in zip(kernels, ("head.dense", "head.out_proj")):
        layer = path.split(":")[0].rsplit("/", 1)[0]
        if layer not in biases:
            raise AlolError(f"the Keras layer {layer} has a kernel but no bias.")
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
        state[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(biases[layer]))
    return state


def convert(h5_path: str | Path, base: str, out: str | Path) -> Path:
    """Write a critic folder: `base`'s RoBERTa config and tokenizer (hub id or folder, e.g.
    roberta-large-mnli) and the Keras weights as model.safetensors. Every tensor must fit the config."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, RobertaConfig

    out = Path(out)
    state = state_dict_from_keras_h5(h5_path)
    config = RobertaConfig.from_pretrained(base)
    head_hidden = state["head.dense.weight"].shape[0]
    expected = CometCritic(config, head_hidden).state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith("position_ids"))
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise AlolError(f"{h5_path}: does not fit {base}'s config: missing {missing[:4]}, unexpected "
                        f"{unexpected[:4]}, wrong shape {wrong[:4]}.")
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    save_file(state, out / "model.safetensors")
    (out / "critic.json").write_text(json.dumps({"head_hidden": int(head_hidden), "source": str(h5_path)}) + "\n")
    return out


def main() -> None:
    import typer

    app = typer.Typer(add_completion=False, help="The COMET critic.")

    @app.command("convert")
    def convert_cmd(h5: Path = typer.Argument(..., help="The authors' Keras critic weights (H5)."),
                    base: str = typer.Argument(..., help="The RoBERTa it was built on (roberta-large-mnli)."),
                    out: Path = typer.Argument(..., help="Folder to write the critic to.")):
        """The authors' Keras critic -> a critic folder (safetensors) for `type: comet_critic`."""
        print(convert(h5, base, out))

    @app.command("noop", hidden=True)
    def _noop():  # typer runs a single command without its name; two keep `convert` explicit
        pass

    app()


if __name__ == "__main__":
    main()
