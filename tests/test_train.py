"""Training on a tiny random Llama: log-probs, accumulation invariance, every algorithm, determinism."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from alol.algorithms import ALGORITHMS, offline, preference
from alol.algorithms.finetune import FinetuneConfig
from alol.models.load import ModelConfig, load_policy
from alol.training.plans import uniform_plan
from alol.models.logprobs import collate, completion_logps, encode, forward_rows
from alol.training.loop import TrainConfig, train
from conftest import build_tiny_llama

PROMPTS = ["hello there", "what do you like to do for fun", "the weather", "i am fine thanks and you",
           "how are you", "you are", "i like hiking", "what"]
REPLIES = ["hi", "reading books and hiking", "is nice", "fine", "i am doing fine today", "so dumb", "me too", "fun"]


@pytest.fixture()
def tiny(tmp_path, tiny_tokenizer):
    build_tiny_llama(tmp_path / "tiny", tiny_tokenizer)
    return tmp_path / "tiny", tiny_tokenizer


def examples(tokenizer, n=8):
    return encode(tokenizer, PROMPTS[:n], REPLIES[:n], max_prompt_tokens=64, max_completion_tokens=16)


def test_completion_logps_match_full_logits(tiny):
    path, tok = tiny
    model = load_policy(path, ModelConfig(mode="full"))
    exs = examples(tok, 4)
    batch = collate(exs, tok.pad_token_id)
    got = completion_logps(model, batch)
    for i, e in enumerate(exs):  # naive: one unpadded sequence, every position's logits
        ids = torch.tensor([e.prompt_ids + e.completion_ids])
        logits = model(input_ids=ids).logits[0].log_softmax(-1)
        n, p = len(e.completion_ids), len(e.prompt_ids)
        expected = logits[p - 1:p - 1 + n].gather(-1, torch.tensor(e.completion_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(got[i, -n:], expected, atol=1e-5, rtol=1e-5)
        assert (got[i, :-n] == 0).all() and e.completion_ids[-1] == tok.eos_token_id


def run(path, tok, algorithm="nll", mode="full", steps=2, batch_size=4, micro=4, extras=None, cfg=None, lr=1e-3,
        max_grad_norm=1.0, validate=None, eval_every=0, adam_eps=1e-8):
    torch.manual_seed(0)
    model = load_policy(path, ModelConfig(mode=mode))
    exs = examples(tok)
    rng = np.random.default_rng(0)
    extras = extras if extras is not None else {
        "reward": rng.uniform(0.5, 2, len(exs)).tolist(), "advantage": [1.0, -0.5, 0.7, 0.2, 1.5, -1.0, 0.3, 0.9],
        "ref_token_logps": [(-rng.uniform(1, 6, len(e.completion_ids))).tolist() for e in exs]}
    log = []
    model = train(model, [[e] for e in exs], extras, uniform_plan(len(exs), steps, batch_size, seed=0),
                  offline.loss_fn(ALGORITHMS[algorithm], cfg or FinetuneConfig(ppo_clip=0.2, kl_beta=0.1)),
                  TrainConfig(learning_rate=lr, batch_size=batch_size, micro_batch_size=micro, weight_decay=0.0,
                              max_grad_norm=max_grad_norm, eval_every=eval_every, adam_eps=adam_eps), tok.pad_token_id,
                  log=lambda s, m: log.append({"step": s, **m}), validate=validate)
    return model, log


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_gradient_accumulation_invariance(tiny):
    path, tok = tiny
    # max_grad_norm 0.5 makes the clip active: it sees the scale of the accumulated gradient. Adam's
    # eps 1e-6: with 1e-8, coordinates whose gradient is float noise (~1e-9) get updates of any size
    a, log_a = run(path, tok, "a_lol", batch_size=4, micro=4, max_grad_norm=0.5, adam_eps=1e-6)
    b, log_b = run(path, tok, "a_lol", batch_size=4, micro=1, max_grad_norm=0.5, adam_eps=1e-6)
    assert log_a[0]["grad_norm"] == pytest.approx(log_b[0]["grad_norm"], rel=1e-6)
    assert log_a[0]["loss"] == pytest.approx(log_b[0]["loss"], rel=1e-6)
    for name, value in trainable(a).items():
        torch.testing.assert_close(value, trainable(b)[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("algorithm", [name for name, a in ALGORITHMS.items() if a.family is offline.OFFLINE])
def test_every_algorithm_moves_every_parameter_deterministically(tiny, algorithm):
    path, tok = tiny
    before = trainable(load_policy(path, ModelConfig(mode="full")))
    first, log = run(path, tok, algorithm)
    after = trainable(first)
    assert set(after) == set(before)
    frozen = [n for n in before if torch.equal(before[n], after[n])]
    assert not frozen, f"{algorithm}: parameters did not move: {frozen}"
    assert all(np.isfinite(m["loss"]) for m in log)
    second, _ = run(path, tok, algorithm)
    assert all(torch.equal(v, trainable(second)[n]) for n, v in after.items()), "same seed, different weights"


def test_lora_moves_every_adapter_parameter(tiny):
    path, tok = tiny
    model, _ = run(path, tok, "a_lol", mode="lora")
    params = trainable(model)
    assert params and all("lora_" in n for n in params)
    # B starts at zero (so A gets no gradient at step 1); after 2 steps both have moved
    fresh = trainable(load_policy(path, ModelConfig(mode="lora")))
    assert all(not torch.equal(fresh[n], v) for n, v in params.items())


def test_saved_adapter_is_byte_identical_across_processes(tiny, tmp_path):
    """DVC hashes outputs: equal weights must give equal files, whatever Python's string hash seed
    (peft keeps target_modules in a set)."""
    import os
    import subprocess
    import sys

    path, _ = tiny
    script = ("import sys, torch; from alol.models.load import ModelConfig, load_policy, load_tokenizer, save_policy; "
              "torch.manual_seed(0); m = load_policy(sys.argv[1], ModelConfig(mode='lora')); "
              "save_policy(m, load_tokenizer(sys.argv[1]), sys.argv[2])")
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / seed)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


@pytest.mark.parametrize("algorithm", ["dpo", "dpo_ref_free", "pro"])
def test_preference_algorithms_move_every_parameter(tiny, algorithm):
    path, tok = tiny
    torch.manual_seed(0)
    model = load_policy(path, ModelConfig(mode="full"))
    before = trainable(model)
    chosen, rejected = examples(tok, 8)[:4], examples(tok, 8)[4:]
    rows = [[c, r] for c, r in zip(chosen, rejected)]
    extras = {"ref_chosen_logp": [-5.0, -6.0, -4.0, -7.0], "ref_rejected_logp": [-6.0, -5.0, -8.0, -7.5],
              "chosen_raw_reward": [1.0, 0.5, 2.0, 0.3], "rejected_raw_reward": [0.2, 0.1, 1.0, -0.3]}
    model = train(model, rows, extras, uniform_plan(4, 2, 4, seed=0),
                  preference.loss_fn(ALGORITHMS[algorithm], FinetuneConfig(), candidates=2),
                  TrainConfig(learning_rate=1e-3, batch_size=4, micro_batch_size=2, weight_decay=0.0),
                  tok.pad_token_id)
    after = trainable(model)
    assert not [n for n in before if torch.equal(before[n], after[n])]


def test_precomputed_reference_equals_recomputed(tiny):
    path, tok = tiny
    reference = load_policy(path, ModelConfig(mode="full"), trainable=False)
    policy = load_policy(path, ModelConfig(mode="full"))
    with torch.no_grad():  # make the policy differ from the reference
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    exs = examples(tok)
    ref_columns, _ = forward_rows(reference, exs, tok.pad_token_id, batch_size=3, want_states=False)
    advantage = torch.tensor([1.0, -0.5, 0.7, 0.2, 1.5, -1.0, 0.3, 0.9])
    batch = collate(exs, tok.pad_token_id, {"ref_token_logps": ref_columns})
    logps = completion_logps(policy, batch)
    with torch.no_grad():  # what the authors' code does: a second model, every batch
        recomputed = completion_logps(reference, collate(exs, tok.pad_token_id))
    for name in ("a_lol", "a_lol_seq", "a_lol_kl", "r_lol"):
        kwargs = dict(logps=logps, mask=batch["completion_mask"], advantage=advantage, reward=advantage.abs(),
                      ppo_clip=0.2, kl_beta=0.1)
        precomputed = ALGORITHMS[name].loss(ref_logps=batch["ref_token_logps"], **kwargs)
        online = ALGORITHMS[name].loss(ref_logps=recomputed, **kwargs)
        torch.testing.assert_close(precomputed, online, atol=1e-5, rtol=1e-6)


def test_qlora_step_on_cpu(tiny):
    import bitsandbytes  # noqa: F401  (part of the test install: this test must never skip)
    path, tok = tiny
    model = load_policy(path, ModelConfig(mode="qlora", lora_r=4))
    assert any("4bit" in type(m).__name__ for m in model.modules()), "base weights are not 4-bit"
    before = trainable(model)
    model = train(model, [[e] for e in examples(tok)], {}, uniform_plan(8, 2, 4, seed=0),
                  offline.loss_fn(ALGORITHMS["nll"], FinetuneConfig()), TrainConfig(learning_rate=1e-2, batch_size=4,
                                                                          micro_batch_size=4, weight_decay=0.0),
                  tok.pad_token_id)
    after = trainable(model)
    assert before and all(not torch.equal(before[n], after[n]) for n in before)


def test_periodic_validation_keeps_the_best_weights(tiny):
    path, tok = tiny
    snapshots = []

    def validate(model):  # scores 0 (start), 3 (step 2), 1 (step 4), 2 (step 5 = the end)
        snapshots.append(trainable(model))
        return [0.0, 3.0, 1.0, 2.0][len(snapshots) - 1]

    model, log = run(path, tok, "nll", steps=5, validate=validate, eval_every=2)
    assert [m["step"] for m in log if "validation/reward" in m] == [0, 2, 4, 5]
    kept = trainable(model)
    assert all(torch.equal(v, snapshots[1][n]) for n, v in kept.items()), "the step-2 weights were not restored"
    assert not all(torch.equal(v, snapshots[3][n]) for n, v in kept.items())
    assert [m["validation/best"] for m in log if "validation/best" in m] == [0.0, 3.0, 3.0, 3.0]


def test_validation_that_never_beats_the_start_returns_the_start(tiny):
    path, tok = tiny
    start = trainable(load_policy(path, ModelConfig(mode="full")))
    scores = iter([5.0, 1.0, 2.0])
    model, _ = run(path, tok, "nll", steps=2, validate=lambda m: next(scores), eval_every=1)
    assert all(torch.equal(v, start[n]) for n, v in trainable(model).items())


class Crash(Exception):
    pass


def test_best_weights_and_score_survive_a_resume(tiny, tmp_path):
    """Killed after the step-2 checkpoint, the resumed run still knows that step 1 scored best."""
    from alol.training.loop import Checkpoint

    path, tok = tiny

    def run_scored(scores, folder):
        snapshots = []

        def validate(model):
            snapshots.append(trainable(model))
            score = scores.pop(0)
            if score is None:
                raise Crash
            return score

        torch.manual_seed(0)
        model = load_policy(path, ModelConfig(mode="full"))
        exs = examples(tok)
        result = train(model, [[e] for e in exs], {}, uniform_plan(len(exs), 5, 4, seed=0),
                       offline.loss_fn(ALGORITHMS["nll"], FinetuneConfig()),
                       TrainConfig(learning_rate=1e-3, batch_size=4, micro_batch_size=4, weight_decay=0.0,
                                   eval_every=1, checkpoint_every=1), tok.pad_token_id,
                       checkpoint=Checkpoint(folder, "run-1"), validate=validate)
        return trainable(result), snapshots

    straight, snapshots = run_scored([0.0, 3.0, 1.0, 1.0, 2.0, 0.5], tmp_path / "a")
    with pytest.raises(Crash):  # validation of step 3 crashes: the last checkpoint is step 2's
        run_scored([0.0, 3.0, 1.0, None], tmp_path / "b")
    resumed, _ = run_scored([1.0, 2.0, 0.5], tmp_path / "b")  # steps 3, 4, 5
    assert all(torch.equal(v, snapshots[1][n]) for n, v in straight.items())  # step 1's weights
    assert all(torch.equal(v, straight[n]) for n, v in resumed.items())


def test_a_saved_adapter_loads_from_outside_its_repository(tmp_path, tiny_tokenizer, monkeypatch):
    """models/policy records its base as data/assets/policy (relative to the repository): it must load
    from any folder, as peft loads it from the repository root."""
    from alol.models.load import load_tokenizer, save_policy
    from alol.training.reference import load_frozen

    repo = tmp_path / "repo"
    build_tiny_llama(repo / "data" / "assets" / "policy", tiny_tokenizer)
    monkeypatch.chdir(repo)
    model = load_policy("data/assets/policy", ModelConfig(mode="lora"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.1)
    save_policy(model, tiny_tokenizer, repo / "models" / "policy")
    expected = completion_logps(model.eval(), collate(examples(tiny_tokenizer, 2), tiny_tokenizer.pad_token_id))
    monkeypatch.chdir(tmp_path)  # somewhere else
    loaded = load_frozen(repo / "models" / "policy", ModelConfig(mode="lora"))
    assert load_tokenizer(repo / "models" / "policy").eos_token_id == tiny_tokenizer.eos_token_id
    got = completion_logps(loaded, collate(examples(tiny_tokenizer, 2), tiny_tokenizer.pad_token_id))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


class History:
    """What the loop needs of a LiveLog: called on every logged row, and keeps them."""

    def __init__(self):
        self.history = []

    def __call__(self, step, metrics):
        self.history.append({"step": step, **metrics})


def test_a_resumed_runs_summary_covers_the_whole_run(tiny, tmp_path):
    """Stopped after the step-3 checkpoint and resumed with an empty log (DVC deletes the live folder
    before a rerun), the summary is the uninterrupted run's: the history travels in the checkpoint."""
    from alol.training.loop import Checkpoint
    from alol.training.summary import summarize_loop

    path, tok = tiny
    exs = examples(tok)

    def run_logged(folder, stop_at=None):
        calls = []
        nll = offline.loss_fn(ALGORITHMS["nll"], FinetuneConfig())

        def loss_fn(model, batch):  # one micro-batch per step: call k is step k
            calls.append(1)
            if len(calls) == stop_at:
                raise Crash
            return nll(model, batch)

        torch.manual_seed(0)
        log = History()
        train(load_policy(path, ModelConfig(mode="full")), [[e] for e in exs], {}, uniform_plan(len(exs), 5, 4, seed=0),
              loss_fn, TrainConfig(learning_rate=1e-3, batch_size=4, micro_batch_size=4, weight_decay=0.0,
                                   checkpoint_every=1), tok.pad_token_id, checkpoint=Checkpoint(folder, "run-1"), log=log)
        return log.history

    straight = run_logged(tmp_path / "a")
    with pytest.raises(Crash):
        run_logged(tmp_path / "b", stop_at=4)  # the last checkpoint is step 3's
    resumed = run_logged(tmp_path / "b")
    losses = [[h["loss"] for h in rows] for rows in (straight, resumed)]
    assert len(losses[0]) == 5 and len(losses[1]) == 5  # every step logged once
    assert np.mean(losses[1]) == np.mean(losses[0])
    assert summarize_loop(resumed)["first_loss"] == summarize_loop(straight)["first_loss"]
    assert summarize_loop(resumed)["steps"] == 5


# --- run summaries: one summarize, each family naming its fields (worked by hand) --------------

def test_the_loops_summary_by_hand():
    from alol.training.summary import summarize_loop

    history = [{"step": 0, "validation/reward": 0.5, "validation/best": 0.5},
               {"step": 1, "loss": 2.0, "tokens_per_second": 100.0, "step_seconds": 1.0},
               {"step": 2, "loss": 1.0, "tokens_per_second": 300.0, "step_seconds": 3.0},
               {"step": 2, "validation/reward": 0.75, "validation/best": 0.75}]
    summary = summarize_loop(history)
    assert list(summary) == ["steps", "first_loss", "final_loss", "tokens_per_second", "train_seconds",
                             "best_validation_step", "best_validation_reward"]
    # tokens/s over the run: (100 x 1 + 300 x 3) / (1 + 3) = 250
    assert summary == {"steps": 2, "first_loss": 2.0, "final_loss": 1.0, "tokens_per_second": 250.0,
                       "train_seconds": 4.0, "best_validation_step": 2, "best_validation_reward": 0.75}
    assert summarize_loop(history[:1]) == {"steps": 0}


def test_the_ppo_summary_by_hand():
    from alol.algorithms.ppo_trainer import summarize_ppo

    row = lambda step, reward, loss, kl, tokens, tps, update, seconds: {  # noqa: E731
        "step": step, "rewards/mean": reward, "loss": loss, "kl": kl, "optimizer_steps": 4, "rollout_tokens": tokens,
        "rollout_seconds": 2.0, "tokens_per_second": tps, "update_seconds": update, "step_seconds": seconds}
    summary = summarize_ppo([row(1, 0.2, 1.5, 0.1, 100, 50.0, 1.0, 3.0), row(2, 0.4, 1.0, 0.3, 60, 150.0, 3.0, 5.0)])
    assert list(summary) == ["steps", "optimizer_steps", "first_reward", "final_reward", "first_loss", "final_loss",
                             "final_kl", "generated_tokens", "rollout_tokens_per_second", "tokens_per_second",
                             "rollout_seconds", "train_seconds"]
    # rollout tokens/s: 160 / 4 s; training tokens/s: (50 x 1 + 150 x 3) / 4 s
    assert summary == {"steps": 2, "optimizer_steps": 8, "first_reward": 0.2, "final_reward": 0.4, "first_loss": 1.5,
                       "final_loss": 1.0, "final_kl": 0.3, "generated_tokens": 160, "rollout_tokens_per_second": 40.0,
                       "tokens_per_second": 125.0, "rollout_seconds": 4.0, "train_seconds": 8.0}


def test_the_trl_summary_by_hand():
    from alol.algorithms.trl import summarize_trl

    history = [{"step": 1, "reward": 0.1, "loss": 0.5, "step_time": 2.0}, {"step": 2, "reward": 0.3, "step_time": 2.0},
               {"step": 2, "train_runtime": 5.0}]
    assert summarize_trl(history, 100) == {"steps": 2, "first_reward": 0.1, "final_reward": 0.3, "first_loss": 0.5,
                                           "final_loss": None, "generated_tokens": 100,
                                           "generated_tokens_per_second": 20.0, "train_seconds": 5.0}
    assert summarize_trl(history[:2], 100)["train_seconds"] == 4.0  # no train_runtime: the steps' times
    assert summarize_trl([], 0) == {"steps": 0}
