"""PPO: every formula worked out by hand, the reference is pi_ref (not the policy being trained), and the
finetune stage end to end on a tiny random Llama (reward rises; 2 processes = 1 process x accumulation 2)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file

from alol.algorithms import ppo
from alol.models.load import ModelConfig, tokenizer_fingerprint
from conftest import build_tiny_llama, run_stage


# --- the formulas, by hand ------------------------------------------------------------------------

def test_gae_and_returns_by_hand_on_four_tokens():
    """gamma 0.9, lambda 0.5, so gamma * lambda = 0.45. Row 0 has 4 tokens; row 1 has 3 (one pad in front:
    completions are right-aligned), with garbage at the pad that must not leak into its real tokens.
    Row 0: deltas d_t = r_t + 0.9 V_{t+1} - V_t (V_4 = 0):
      d3 = 1.0 - 0.8 = 0.2;  d2 = 0.0 + 0.72 - 0.6 = 0.12;  d1 = -0.2 + 0.54 - 0.4 = -0.06;  d0 = 0.1 + 0.36 - 0.5 = -0.04
    A3 = 0.2;  A2 = 0.12 + 0.45 * 0.2 = 0.21;  A1 = -0.06 + 0.45 * 0.21 = 0.0345;  A0 = -0.04 + 0.45 * 0.0345 = -0.024475
    returns = A + V = 0.475525, 0.4345, 0.81, 1.0.
    Row 1 (V = 0, reward 2 on the last token): A = 0.45^2 * 2, 0.45 * 2, 2 = 0.405, 0.9, 2; returns the same."""
    rewards = torch.tensor([[0.1, -0.2, 0.0, 1.0], [9.0, 0.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.4, 0.6, 0.8], [7.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [0, 1, 1, 1]])
    advantages, returns = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert torch.allclose(advantages, torch.tensor([[-0.024475, 0.0345, 0.21, 0.2], [0, 0.405, 0.9, 2.0]]), atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[0.475525, 0.4345, 0.81, 1.0], [0, 0.405, 0.9, 2.0]]), atol=1e-6)
    # gamma = lambda = 1: A_t is the sum of the rewards from t on minus V_t (Monte Carlo)
    advantages, returns = ppo.gae(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=1.0)
    assert torch.allclose(advantages, torch.tensor([[0.9 - 0.5, 0.8 - 0.4, 1.0 - 0.6, 1.0 - 0.8]]), atol=1e-6)
    assert torch.allclose(returns, torch.tensor([[0.9, 0.8, 1.0, 1.0]]), atol=1e-6)


def test_kl_penalized_rewards_by_hand():
    """beta 0.5; log pi - log pi_ref = 0.5, -1, 0, 0.5 -> -beta * that = -0.25, 0.5, 0, -0.25; the sequence
    reward (1.0) lands on the last token: -0.25, 0.5, 0, 0.75. Padding gets nothing."""
    logps = torch.tensor([[-1.0, -2.0, -1.0, -0.5], [0.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0, -1.0], [-3.0, -1.0, -2.0, -1.0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [0, 1, 1, 1]])
    rewards = ppo.kl_penalized_rewards(torch.tensor([1.0, 2.0]), logps, ref, mask, kl_coef=0.5)
    assert torch.allclose(rewards, torch.tensor([[-0.25, 0.5, 0.0, 0.75], [0.0, 0.0, -0.5, 2.0]]))


def test_clipped_policy_objective_by_hand():
    """eps 0.2. Per token (ratio r, advantage A): -min(r A, clip(r) A) = max(-r A, -clip(r) A)
      r 1.1, A  2: inside the clip            -> -2.2 (gradient -A r = -2.2)
      r 1.5, A  1: above 1.2, A > 0            -> max(-1.5, -1.2) = -1.2 (clipped: no gradient)
      r 0.5, A -1: below 0.8, A < 0            -> max(0.5, 0.8) = 0.8 (clipped: no gradient)
      r 1.5, A -1: above 1.2 but A < 0         -> max(1.5, 1.2) = 1.5 (the pessimistic, unclipped term: gradient 1.5)
    mean = (-2.2 - 1.2 + 0.8 + 1.5) / 4 = -0.275; clip fraction 2/4; d loss / d log pi = (-2.2, 0, 0, 1.5) / 4."""
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.1, 1.5, 0.5, 1.5]])).requires_grad_()
    advantages = torch.tensor([[2.0, 1.0, -1.0, -1.0]])
    loss, clip_fraction = ppo.policy_loss(logps, old, advantages, torch.ones(1, 4), cliprange=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-0.275, abs=1e-6) and clip_fraction.item() == 0.5
    assert torch.allclose(logps.grad, torch.tensor([[-2.2, 0.0, 0.0, 1.5]]) / 4, atol=1e-6)
    # a padded token counts for nothing
    loss, _ = ppo.policy_loss(logps.detach(), old, advantages, torch.tensor([[1.0, 1, 1, 0]]), cliprange=0.2)
    assert loss.item() == pytest.approx((-2.2 - 1.2 + 0.8) / 3, abs=1e-6)


def test_clipped_value_loss_by_hand():
    """eps_v 0.2, V_old = 1 everywhere, so the clipped value is clip(V, 0.8, 1.2):
      V 1.1, R 2: inside           -> (0.9)^2 = 0.81 both ways
      V 1.5, R 0: clipped to 1.2   -> max(2.25, 1.44) = 2.25 (unclipped term)
      V 1.5, R 2: clipped to 1.2   -> max(0.25, 0.64) = 0.64 (clipped term: no gradient)
    0.5 * mean = 0.5 * 3.7 / 3; clip fraction 1/3; d loss / d V = 0.5 * 2 (V - R) / 3 = (-0.3, 0.5, 0)."""
    values = torch.tensor([[1.1, 1.5, 1.5]], requires_grad=True)
    loss, clip_fraction = ppo.value_loss(values, torch.ones(1, 3), torch.tensor([[2.0, 0.0, 2.0]]), torch.ones(1, 3),
                                         cliprange_value=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * 3.7 / 3, abs=1e-6) and clip_fraction.item() == pytest.approx(1 / 3)
    assert torch.allclose(values.grad, torch.tensor([[-0.3, 0.5, 0.0]]), atol=1e-6)


def test_adaptive_kl_controller_by_hand():
    """beta 0.2, target 6, horizon 10000, 16 rollouts: error clip(KL / 6 - 1, -0.2, 0.2).
    KL 9: error 0.5 -> 0.2 -> beta 0.2 * (1 + 0.2 * 16 / 10000) = 0.200064.
    KL 5.4: error -0.1 -> beta 0.200064 * (1 - 0.1 * 16 / 10000) = 0.200064 * 0.99984.
    KL 0: error -1 -> -0.2. A fixed controller (target None) never moves."""
    ctl = ppo.KLController(0.2, target=6.0, horizon=10000)
    assert ctl.update(9.0, 16) == pytest.approx(0.200064, abs=1e-12)
    assert ctl.update(5.4, 16) == pytest.approx(0.200064 * 0.99984, abs=1e-12)
    assert ctl.update(0.0, 16) == pytest.approx(0.200064 * 0.99984 * (1 - 0.2 * 16 / 10000), abs=1e-12)
    fixed = ppo.KLController(0.2)
    assert fixed.update(100.0, 16) == 0.2


def test_whiten_by_hand():
    """1, 2, 3 (+ a pad): mean 2, variance 2/3 -> -sqrt(1.5), 0, sqrt(1.5); the pad stays 0."""
    out = ppo.whiten(torch.tensor([[1.0, 2.0, 3.0, 50.0]]), torch.tensor([[1.0, 1, 1, 0]]))
    assert torch.allclose(out, torch.tensor([[-math.sqrt(1.5), 0.0, math.sqrt(1.5), 0.0]]), atol=1e-4)


def test_rollout_targets_put_the_penalty_on_the_reference_log_ratio():
    """The loop's glue on two rollouts of 2 and 1 tokens (gamma = lambda = 1, V = 0, beta 0.5): rollout A
    (log pi -1, -2; log pi_ref -1.5, -1; reward 1) gets per-token rewards -0.25, 0.5 + 1, so returns
    1.25, 1.5; rollout B (log pi = log pi_ref = -1; reward 2) returns 2. KL per reply: -0.5 and 0."""
    from alol.algorithms.ppo_trainer import PPOConfig, rollout_targets

    scored = [([-1.0, -2.0], [0.0, 0.0], [-1.5, -1.0]), ([-1.0], [0.0], [-1.0])]
    advantages, returns, stats = rollout_targets(np.array([1.0, 2.0]), scored, PPOConfig(gamma=1.0, lam=1.0),
                                                 kl_coef=0.5)
    assert returns[0] == pytest.approx([1.25, 1.5]) and returns[1] == pytest.approx([2.0])
    assert stats["kl"] == pytest.approx(-0.25)
    flat = np.array(advantages[0] + advantages[1])  # whitened over the batch's 3 tokens
    assert flat.mean() == pytest.approx(0.0, abs=1e-6) and flat.std() == pytest.approx(1.0, abs=1e-3)


# --- the reference is pi_ref, on the policy's own weights --------------------------------------------

@pytest.fixture()
def adapter_reference(tmp_path, tiny_tokenizer):
    """A reference that is itself a LoRA adapter on a base (the default task's models/reference)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    build_tiny_llama(tmp_path / "base", tiny_tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    torch.manual_seed(1)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a reference that differs from its base
    model.save_pretrained(tmp_path / "reference")
    tiny_tokenizer.save_pretrained(tmp_path / "reference")
    return tmp_path


def rollout_batch(tokenizer):
    from alol.models.logprobs import Example

    prompt = tokenizer("hello there how are you", add_special_tokens=False)["input_ids"]
    return [Example(prompt, tokenizer("i am fine", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]),
            Example(prompt[:3], tokenizer("the weather is nice", add_special_tokens=False)["input_ids"])]


@pytest.mark.parametrize("reference_kind, mode", [("adapter", "lora"), ("base", "lora"), ("adapter", "qlora")])
def test_penalty_uses_the_reference_not_the_current_policy(adapter_reference, tiny_tokenizer, reference_kind, mode):
    """After the policy moves, the log-probs the KL penalty reads are the reference's (the frozen copy of
    the reference adapter; or, for a full reference model, the base with the adapter disabled), not
    the policy's; and no second model is loaded. QLoRA (HH's setting) too, on the CPU."""
    from alol.algorithms import ppo_trainer as online
    from alol.training.reference import load_frozen, load_trainable
    from alol.models.logprobs import collate, completion_logps

    reference = adapter_reference / ("reference" if reference_kind == "adapter" else "base")
    cfg = ModelConfig(mode=mode, lora_r=4, lora_alpha=8)
    policy = load_trainable(reference, cfg)
    assert online.attach_reference(policy, reference, cfg) is None  # no second model
    with torch.no_grad():  # an update: the trained adapter moves away from the reference
        for name, param in policy.named_parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    examples = rollout_batch(tiny_tokenizer)
    batch = collate(examples, tiny_tokenizer.pad_token_id)
    expected = completion_logps(load_frozen(reference, ModelConfig(mode="full" if mode == "lora" else mode)), batch)
    current = completion_logps(policy, batch)
    model = online.PolicyWithValue(policy)
    scored = online.score_rollouts(model, None, examples, tiny_tokenizer.pad_token_id, micro_batch=2)
    atol = 1e-5 if mode == "lora" else 1e-3  # the 4-bit CPU kernels' rounding depends on the batch
    for row, (logps, values, ref) in enumerate(scored):
        n = len(examples[row].completion_ids)
        assert torch.allclose(torch.tensor(ref), expected[row, -n:], atol=atol)
        assert torch.allclose(torch.tensor(logps), current[row, -n:], atol=atol)
        assert (torch.tensor(ref) - current[row, -n:]).abs().max() > 1e-2
        assert values == [0.0] * n  # the zero-initialised value head
    # the trained adapter is still the trainable one, and the saved policy has no reference adapter in it
    assert all(p.requires_grad == (".default." in n) for n, p in policy.named_parameters() if "lora_" in n)
    assert list(online.detach_reference(policy).peft_config) == ["default"]


# --- the finetune stage, end to end ------------------------------------------------------------------

SHORT_REWARD = '''
def score(prompts, completions):
    """Short tokens: fewer characters per reply (a tiny random model learns it in a few steps)."""
    return [-len(c) / 10.0 for c in completions]
'''
PROMPTS = ["hello there", "what do you like to do for fun", "the weather", "i am fine thanks and you",
           "how are you", "you are", "i like hiking", "what"]


def write_params(root, **ppo_settings):
    settings = {"steps": 20, "rollout_batch_size": 16, "ppo_epochs": 2, "init_kl_coef": 0.05,
                "generation": {"max_new_tokens": 10, "do_sample": True, "batch_size": 8},
                "train": {"learning_rate": 1.0e-2, "batch_size": 8, "micro_batch_size": 4, "weight_decay": 0.0}}
    settings.update(ppo_settings)
    params = {"base": {"seed": 3, "max_prompt_tokens": 32, "max_completion_tokens": 16},
              "model": {"mode": "full"}, "algorithm": "ppo",
              "rewards": {"short": {"type": "python", "function": "short_reward:score", "weight": 1.0}},
              "finetune": {"ppo": settings}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def prepare(root, tokenizer):
    """What the upstream stages would have written for the online algorithms: the annotated train and
    validation prompts, the reward's (empty) state, the advantages' tokenizer fingerprint."""
    (root / "short_reward.py").write_text(SHORT_REWARD)
    annotated = root / "annotated"
    annotated.mkdir()
    frame = pl.DataFrame({"prompt_id": [f"p{i}" for i in range(8)],
                          "prompt": [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n" for p in PROMPTS],
                          "context": PROMPTS})
    frame.write_parquet(annotated / "train.parquet")
    frame.write_parquet(annotated / "validation.parquet")
    (annotated / "reward_state.json").write_text("{}")
    (root / "adv").mkdir()
    (root / "adv" / "meta.json").write_text(json.dumps({"tokenizer": tokenizer_fingerprint(tokenizer)}))
    return root


@pytest.fixture()
def workdir(tmp_path, tiny_tokenizer):
    build_tiny_llama(tmp_path / "reference", tiny_tokenizer)
    write_params(prepare(tmp_path, tiny_tokenizer))
    return tmp_path


def finetune(root, out="policy", processes=0, **kwargs):
    args = [root / "adv", root / "plans.parquet", root / "reference", root / out, root / f"results-{out}",
            "--annotated", root / "annotated", "--assets", root, "--params", root / "params.yaml"]
    return run_stage("finetune.py", *args, cwd=root, check=True, processes=processes,
                     env={"PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
                          "OMP_NUM_THREADS": "1"}, **kwargs)


def test_ppo_end_to_end_reward_rises(workdir):
    """20 PPO steps of 16 rollouts on a tiny random Llama (about 2 s of training): the mean reward of the
    rollouts (minus a tenth of the reply's characters) rises, the KL to the reference grows, every weight
    moved, and the cost is in the summary."""
    finetune(workdir)
    summary = json.loads((workdir / "results-policy" / "summary.json").read_text())
    rewards = [float(line.split("\t")[-1]) for line in
               (workdir / "results-policy" / "live" / "plots" / "metrics" / "rewards" / "mean.tsv").read_text()
               .splitlines()[1:]]
    assert summary["steps"] == 20 and summary["optimizer_steps"] == 20 * 2 * 2 and len(rewards) == 20
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4]) + 0.5, rewards  # 5 characters shorter
    assert summary["generated_tokens"] > 0 and summary["rollout_tokens_per_second"] > 0
    assert summary["tokens_per_second"] > 0 and summary["final_kl"] > 0
    start, trained = load_file(workdir / "reference" / "model.safetensors"), load_file(workdir / "policy" / "model.safetensors")
    assert set(start) == set(trained) and all(not torch.equal(start[k], trained[k]) for k in start)


def test_validation_keeps_the_best_weights_the_start_included(workdir):
    """With eval_every, PPO validates like the offline loop (greedy replies to the validation prompts, the
    task reward) and keeps the best weights. The tiny model's greedy replies start empty, which scores 0,
    the top of this reward (minus a tenth of the characters): no later step beats it, so the saved policy
    is the starting one, bit for bit."""
    write_params(workdir, steps=2, train={"learning_rate": 1.0e-2, "batch_size": 8, "micro_batch_size": 4,
                                          "eval_every": 1})
    finetune(workdir)
    summary = json.loads((workdir / "results-policy" / "summary.json").read_text())
    validated = (workdir / "results-policy" / "live" / "plots" / "metrics" / "validation" / "reward.tsv").read_text()
    assert [line.split("\t")[0] for line in validated.splitlines()[1:]] == ["0", "1", "2"]
    assert summary["best_validation_step"] == 0 and summary["best_validation_reward"] == 0.0
    start, saved = load_file(workdir / "reference" / "model.safetensors"), load_file(workdir / "policy" / "model.safetensors")
    assert all(torch.equal(start[k], saved[k]) for k in start)


def test_two_processes_equal_one_with_doubled_accumulation(workdir):
    """2 processes x accumulation 1 == 1 process x accumulation 2 (micro-batch 4, minibatch 8), to float
    rounding, over one batch of rollouts (2 epochs x 2 minibatches = 4 optimizer steps). One batch: the
    next batch would be sampled from the updated policy, where a 1e-7 difference can flip a sampled token
    and the runs would then differ for a reason that is not a bug."""
    write_params(workdir, steps=1, train={"learning_rate": 1.0e-3, "batch_size": 8, "micro_batch_size": 4,
                                          "adam_eps": 1.0e-6})  # float noise in a ~0 gradient cannot swing Adam
    finetune(workdir, "one", processes=1)
    finetune(workdir, "two", processes=2)
    one, two = load_file(workdir / "one" / "model.safetensors"), load_file(workdir / "two" / "model.safetensors")
    start = load_file(workdir / "reference" / "model.safetensors")
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    assert any(not torch.equal(one[k], start[k]) for k in one)
    curves = [json.loads((workdir / f"results-{o}" / "summary.json").read_text()) for o in ("one", "two")]
    assert curves[0]["final_loss"] == pytest.approx(curves[1]["final_loss"], abs=1e-5)
    assert curves[0]["generated_tokens"] == curves[1]["generated_tokens"]
