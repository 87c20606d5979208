"""grpo and rloo through TRL's trainers, from the finetune stage: a couple of steps on a tiny random Llama
with a LoRA reference adapter (the default task's shape), our reward, our prompts; the saved adapter loads
like any policy and moved. rloo runs with beta > 0, so TRL's frozen copy of the reference adapter is used
for its KL (and must not end up in the saved policy)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_ppo import adapter_reference, finetune, prepare  # noqa: F401  (a fixture, and helpers)


@pytest.mark.parametrize("algorithm, beta", [("grpo", 0.0), ("rloo", 0.05)])
def test_trl_online_through_the_stage(adapter_reference, tiny_tokenizer, algorithm, beta):  # noqa: F811
    from alol.models.load import ModelConfig, load_policy

    root = prepare(adapter_reference, tiny_tokenizer)
    params = {"base": {"seed": 3, "max_prompt_tokens": 32, "max_completion_tokens": 16},
              "model": {"mode": "lora", "lora_r": 4, "lora_alpha": 8}, "algorithm": algorithm,
              "rewards": {"short": {"type": "python", "function": "short_reward:score", "weight": 1.0}},
              "finetune": {algorithm: {"steps": 2, "num_generations": 4, "beta": beta,
                                       "generation": {"max_new_tokens": 8, "do_sample": True},
                                       "train": {"learning_rate": 1.0e-2, "batch_size": 8, "micro_batch_size": 4}}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    finetune(root)
    summary = json.loads((root / "results-policy" / "summary.json").read_text())
    assert summary["algorithm"] == algorithm and summary["steps"] == 2
    assert summary["generated_tokens"] > 0 and summary["train_seconds"] > 0
    assert (root / "results-policy" / "live" / "plots" / "metrics" / "reward.tsv").exists()  # TRL's logs, in DVCLive
    config = json.loads((root / "policy" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"].endswith("base")  # an adapter on the same base, like the reference
    assert not (root / "policy" / "ref").exists()  # TRL's reference copy is not saved
    start = load_file(root / "reference" / "adapter_model.safetensors")
    trained = load_file(root / "policy" / "adapter_model.safetensors")
    assert set(start) == set(trained) and all(not torch.equal(start[k], trained[k]) for k in start)
    model = load_policy(root / "base", ModelConfig(mode="lora"), adapter=root / "policy", trainable=False)
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()
