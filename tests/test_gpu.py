"""The GPU check: every model on the GPU, LoRA in bf16, QLoRA in 4-bit, and what each costs.

    ALOL_EXPECT_DEVICE=cuda pytest -m gpu -s        # on a CUDA machine (skipped elsewhere)

ALOL_EXPECT_DEVICE=cuda makes every stage and every `alol.core.device.place` call fail unless the
model landed on a CUDA device, so the tiny default pipeline below checks every model of every
stage. Tokens/s and peak GPU memory are printed as `[gpu] ...` lines. ALOL_GPU_TESTS_ON_CPU=1
runs the same code on the CPU (a dry run of the code paths, with no CUDA assertions).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from alol.core.device import device, reward_dtype
from alol.algorithms import ALGORITHMS, offline
from alol.algorithms.finetune import FinetuneConfig
from alol.models.generate import GenerationConfig, generate
from alol.models.load import ModelConfig, load_policy
from alol.training.plans import uniform_plan
from alol.models.logprobs import encode
from alol.training.loop import TrainConfig, train
from conftest import CORPUS, TINY_PARAMS, build_tokenizer, deep_update, tracked_copy

ON_GPU = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU and not os.environ.get("ALOL_GPU_TESTS_ON_CPU"),
                                                  reason="needs a CUDA GPU")]


def report(what: str, **numbers) -> None:
    memory = torch.cuda.max_memory_allocated() / 2**20 if ON_GPU else float("nan")
    shown = ", ".join(f"{k} {v:,.1f}" for k, v in numbers.items())
    print(f"\n[gpu] {what}: {shown}, peak GPU memory {memory:,.0f} MiB", flush=True)


def fresh_peak() -> None:
    if ON_GPU:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def on_device(module) -> set[str]:
    return {p.device.type for p in module.parameters()}


@pytest.fixture()
def llama(tmp_path):
    """A small random Llama (4 layers, 256 wide): big enough to time, small enough for any GPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama", tok


def rows(tok, n=64):
    prompts = [CORPUS[i % len(CORPUS)] + " " + CORPUS[(i * 3) % len(CORPUS)] for i in range(n)]
    return [[e] for e in encode(tok, prompts, [CORPUS[(i * 5) % len(CORPUS)] for i in range(n)], 128, 32)]


def timed_training(model, tok, steps=4):
    data = rows(tok)
    log = []
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model = train(model, data, {}, uniform_plan(len(data), steps, 16, seed=0), offline.loss_fn(ALGORITHMS["nll"], FinetuneConfig()),
                  TrainConfig(learning_rate=1e-3, batch_size=16, micro_batch_size=8), tok.pad_token_id,
                  log=lambda step, m: log.append(m))
    moved = [n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p.detach())]
    assert moved and len(moved) == len(before), "not every trainable parameter moved"
    return model, sum(m["tokens_per_second"] for m in log[1:]) / max(len(log) - 1, 1)


def test_lora_trains_in_bf16_on_the_gpu(llama):
    path, tok = llama
    fresh_peak()
    model = load_policy(path, ModelConfig(mode="lora", dtype="bfloat16"))
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in base} == {torch.bfloat16}
    if ON_GPU:
        assert on_device(model) == {"cuda"}
    model, tokens_per_second = timed_training(model, tok)
    report("LoRA bf16 training", tokens_per_second=tokens_per_second)


def test_qlora_trains_in_4bit_on_the_gpu(llama):
    import bitsandbytes as bnb

    path, tok = llama
    fresh_peak()
    model = load_policy(path, ModelConfig(mode="qlora", dtype="bfloat16", lora_r=8))
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all(m.weight.quant_state is not None for m in quantized)
    if ON_GPU:
        assert {m.weight.device.type for m in quantized} == {"cuda"} and on_device(model) == {"cuda"}
    model, tokens_per_second = timed_training(model, tok)
    report("QLoRA 4-bit training", tokens_per_second=tokens_per_second)


def test_generation_and_reward_scoring_on_the_gpu(llama, tmp_path):
    from alol.rewards import RewardFunction, reward_config
    from alol.rewards.components import RewardInputs
    from test_hh import build_tiny_reward_model

    path, tok = llama
    fresh_peak()
    model = load_policy(path, ModelConfig(dtype="bfloat16"), trainable=False)
    prompts = [CORPUS[i % len(CORPUS)] for i in range(64)]
    tic = time.perf_counter()
    replies, generated = generate(model, tok, prompts, GenerationConfig(max_new_tokens=32, batch_size=32), 128)
    report("generation (bf16, greedy, batch 32)", tokens_per_second=generated / (time.perf_counter() - tic))

    fresh_peak()
    reward = RewardFunction({"rm": reward_config("rm", {"type": "reward_model", "model": str(
        build_tiny_reward_model(tmp_path / "rm")), "use_stored_logits": False})}, tmp_path)
    scorer = reward.components["rm"]._model("train")
    assert next(scorer.parameters()).dtype == reward_dtype()
    if ON_GPU:
        assert on_device(scorer) == {"cuda"} and reward_dtype() in (torch.bfloat16, torch.float16)
    texts = [f"Human: {p} Assistant: {r}" for p, r in zip(prompts * 4, replies * 4)]
    inputs = RewardInputs(prompts * 4, replies * 4, prompts * 4, turns=[[f"<|prompter|>{p}"] for p in prompts * 4])
    tic = time.perf_counter()
    scores = reward(inputs)["reward"]
    assert len(scores) == len(texts) and all(0 < s < 1 for s in scores)
    report("reward model scoring", rows_per_second=len(texts) / (time.perf_counter() - tic))
    assert str(device()).startswith("cuda" if ON_GPU else "cpu")


@pytest.mark.skipif(not ON_GPU, reason="the tiny real pipeline on the CPU is tests/test_pipeline.py")
def test_tiny_default_pipeline_runs_every_stage_on_the_gpu(tmp_path_factory):
    root = tracked_copy(tmp_path_factory.mktemp("gpu-pipeline"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    tiny = deep_update(json.loads(json.dumps(TINY_PARAMS)), {"model": {"dtype": "bfloat16"}})
    (root / "params.yaml").write_text(yaml.safe_dump(deep_update(params, tiny), sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ALOL_EXPECT_DEVICE": "cuda", "ALOL_REPORT_DEVICES": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, capture_output=True, text=True, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    placed = re.findall(r"\[alol\] (.+?): (\S+) (\S+)", output)
    assert placed and all(dev.startswith("cuda") for _, dev, _ in placed), placed
    print("\n[gpu] models placed:", sorted({(role, dtype) for role, _, dtype in placed}))
    for line in re.findall(r"done in .*peak GPU memory.*", output):
        print("[gpu] stage", line)
    finetune = json.loads((root / "results" / "finetune" / "summary.json").read_text())
    evaluate = json.loads((root / "results" / "evaluate" / "details.json").read_text())
    print(f"[gpu] finetune {finetune['tokens_per_second']:.0f} tokens/s, evaluate generation "
          f"{evaluate['generated_tokens_per_second']:.0f} tokens/s")
