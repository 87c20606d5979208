"""The finetune stage end to end on a tiny model: errors, resume after SIGKILL, 2-process DDP."""

from __future__ import annotations

import json
import signal

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file

from alol.training.advantages import with_advantages
from alol.training.plans import PlanConfig, make_plans
from alol.models.load import ModelConfig, load_policy, tokenizer_fingerprint
from alol.models.logprobs import encode, forward_rows
from conftest import build_tiny_llama, run_stage

PROMPTS = ["hello there", "what do you like to do for fun", "the weather", "i am fine thanks and you",
           "how are you", "you are", "i like hiking", "what"]
REPLIES = ["hi", "reading books and hiking", "is nice", "fine", "i am doing fine today", "so dumb", "me too", "fun"]


def write_params(root, **finetune):
    params = {"base": {"seed": 1, "max_prompt_tokens": 64, "max_completion_tokens": 16},
              "model": {"mode": "full"}, "algorithm": finetune.pop("algorithm", "a_lol"),
              "finetune": {"ppo_clip": 0.2, "kl_beta": 0.1,
                           "train": {"learning_rate": 1.0e-3, "batch_size": 4, "micro_batch_size": 2,
                                     "checkpoint_every": 1, "weight_decay": 0.0}}}
    finetune.setdefault("train", params["finetune"]["train"])
    params["finetune"].update(finetune)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture()
def workdir(tmp_path, tiny_tokenizer):
    """What the advantages and plan stages would have written, on a tiny random Llama."""
    build_tiny_llama(tmp_path / "reference", tiny_tokenizer)
    reference = load_policy(tmp_path / "reference", ModelConfig(), trainable=False)
    exs = encode(tiny_tokenizer, PROMPTS, REPLIES, 64, 16)
    token_logps, _ = forward_rows(reference, exs, tiny_tokenizer.pad_token_id, want_states=False)
    frame = pl.DataFrame({"prompt": PROMPTS, "completion": REPLIES, "reward": np.linspace(0.5, 2.0, 8)})
    table = with_advantages(frame, token_logps, np.full(8, 1.0))
    (tmp_path / "adv").mkdir()
    table.write_parquet(tmp_path / "adv" / "train.parquet")
    (tmp_path / "adv" / "meta.json").write_text(json.dumps({"tokenizer": tokenizer_fingerprint(tiny_tokenizer)}))
    plans, _ = make_plans(table, PlanConfig(steps=6), batch_size=4, seed=0)
    plans.write_parquet(tmp_path / "plans.parquet")
    write_params(tmp_path)
    return tmp_path


def finetune_args(root, out="policy", checkpoint=None):
    args = [root / "adv", root / "plans.parquet", root / "reference", root / out, root / f"results-{out}",
            "--params", root / "params.yaml"]
    return args + (["--checkpoint-dir", root / checkpoint] if checkpoint else [])


def weights(folder):
    return load_file(folder / "model.safetensors")


def test_unknown_algorithm_lists_valid_names(workdir):
    write_params(workdir, algorithm="a_lol_fast")
    proc = run_stage("finetune.py", *finetune_args(workdir), cwd=workdir)
    assert proc.returncode == 1
    assert "unknown algorithm 'a_lol_fast'. Did you mean 'a_lol_seq'? Valid: nll, wbc" in " ".join(proc.stderr.split())


@pytest.mark.parametrize("algorithm, setting, message", [
    ("a_lol_kl", {"kl_beta": 0.0}, "a_lol_kl needs finetune.kl_beta > 0"),
    ("a_lol", {"ppo_clip": 0.0}, "a_lol needs finetune.ppo_clip > 0"),
])
def test_degenerate_settings_are_errors(workdir, algorithm, setting, message):
    write_params(workdir, algorithm=algorithm, **setting)
    proc = run_stage("finetune.py", *finetune_args(workdir), cwd=workdir)
    assert proc.returncode == 1 and message in " ".join(proc.stderr.split())
    assert not (workdir / "policy").exists()


def test_no_positive_advantage_says_what_to_check(workdir):
    table = pl.read_parquet(workdir / "adv" / "train.parquet").with_columns(pl.lit(-1.0).alias("advantage"))
    plans, _ = make_plans(table, PlanConfig(steps=6), batch_size=4, seed=0)
    plans.write_parquet(workdir / "plans.parquet")
    proc = run_stage("finetune.py", *finetune_args(workdir), cwd=workdir)
    assert proc.returncode == 1
    assert "no row has a positive advantage: check the value fit" in " ".join(proc.stderr.split())


@pytest.mark.parametrize("flag", ["ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP"])
def test_sharded_training_is_refused_with_the_fix(workdir, flag):
    proc = run_stage("finetune.py", *finetune_args(workdir), cwd=workdir, env={flag: "true"})
    assert proc.returncode == 1 and "is not supported; alol trains data-parallel (DDP" in " ".join(proc.stderr.split())
    assert not (workdir / "policy").exists()


def test_tokenizer_mismatch_is_an_error(workdir):
    (workdir / "adv" / "meta.json").write_text(json.dumps({"tokenizer": "something-else"}))
    proc = run_stage("finetune.py", *finetune_args(workdir), cwd=workdir)
    assert proc.returncode == 1 and "differs from the one" in proc.stderr


def kill_at(step):
    return {"ALOL_KILL_AFTER_CHECKPOINT": str(step)}


def test_resume_after_sigkill_matches_uninterrupted_run(workdir):
    run_stage("finetune.py", *finetune_args(workdir, "straight"), cwd=workdir, check=True)
    killed = run_stage("finetune.py", *finetune_args(workdir, "resumed", "ckpt"), cwd=workdir, env=kill_at(2))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((workdir / "ckpt" / "step.json").read_text())["step"] == 2
    assert not (workdir / "resumed").exists()
    again = run_stage("finetune.py", *finetune_args(workdir, "resumed", "ckpt"), cwd=workdir, check=True)
    assert "resumed from" in again.stdout + again.stderr
    straight, resumed = weights(workdir / "straight"), weights(workdir / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert not (workdir / "ckpt").exists()  # removed after a successful run
    steps = [(workdir / f"results-{out}" / "live" / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
             for out in ("straight", "resumed")]
    assert steps[0] == steps[1]  # the curve goes on where it stopped: every step once


def test_a_checkpoint_of_another_run_is_discarded_not_resumed(workdir):
    """A killed a_lol run must not be resumed by the next `dvc exp run -S algorithm=nll`."""
    killed = run_stage("finetune.py", *finetune_args(workdir, "a_lol", "ckpt"), cwd=workdir, env=kill_at(2))
    assert killed.returncode == -signal.SIGKILL
    write_params(workdir, algorithm="nll")
    nll = run_stage("finetune.py", *finetune_args(workdir, "nll", "ckpt"), cwd=workdir, check=True)
    assert "discarding the checkpoint" in " ".join(nll.stderr.split() + nll.stdout.split())
    assert "resumed from" not in nll.stdout + nll.stderr
    run_stage("finetune.py", *finetune_args(workdir, "nll-straight"), cwd=workdir, check=True)
    straight, resumed = weights(workdir / "nll-straight"), weights(workdir / "nll")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_two_processes_match_one_with_doubled_accumulation(workdir):
    """batch_size 4 = micro 1 x accumulation 4 (1 process) = micro 1 x accumulation 2 x 2 processes,
    under a linear schedule: same weights, same learning rate at every step, one set of outputs."""
    write_params(workdir, algorithm="a_lol", train={"learning_rate": 1.0e-3, "batch_size": 4, "micro_batch_size": 1,
                                                    "weight_decay": 0.0, "lr_schedule": "linear", "adam_eps": 1.0e-6})
    one = run_stage("finetune.py", *finetune_args(workdir, "one"), cwd=workdir, check=True, processes=1)
    two = run_stage("finetune.py", *finetune_args(workdir, "two"), cwd=workdir, check=True, processes=2)
    assert "on 2 processes" in " ".join(two.stderr.split()) and "on 2 processes" not in one.stderr
    first, second = weights(workdir / "one"), weights(workdir / "two")
    assert max((first[k] - second[k]).abs().max().item() for k in first) < 1e-6

    def curve(out, name):
        rows = (workdir / f"results-{out}" / "live" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        return [[float(x) for x in row.split("\t")] for row in rows[1:]]

    lr_one, lr_two = curve("one", "learning_rate"), curve("two", "learning_rate")
    assert [step for step, _ in lr_two] == [1, 2, 3, 4]  # one writer: no row twice (good_priority: 6 x 0.75 steps)
    assert lr_one == lr_two and lr_one[0][1] > lr_one[-1][1]  # the same, and not constant
    loss_one, loss_two = np.array(curve("one", "loss")), np.array(curve("two", "loss"))
    np.testing.assert_allclose(loss_one, loss_two, rtol=1e-5)  # logged: the mean over all 4 rows, not one share
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".")) == []  # no stray temporaries
    assert json.loads((workdir / "results-two" / "summary.json").read_text())["steps"] == 4


def test_resume_mends_dvclive_files_cut_by_a_kill(tmp_path):
    """A SIGKILL while DVCLive rewrites metrics.json or appends a curve row must not stop the resume."""
    from alol.core.live import LiveLog

    live = tmp_path / "live"
    (live / "plots" / "metrics").mkdir(parents=True)
    (live / "metrics.json").write_text('{\n    "loss": 1.5,\n    "st')  # cut mid-write
    (live / "plots" / "metrics" / "loss.tsv").write_text("step\tloss\n0\t2.0\n1\t1.")  # last row cut
    (live / "plots" / "metrics" / "kl.tsv").write_text("ste")  # not even a whole header
    log = LiveLog(live, resume=True)
    log(1, {"loss": 1.25, "kl": 0.5})
    log.close()
    assert (live / "plots" / "metrics" / "loss.tsv").read_text().splitlines() == ["step\tloss", "0\t2.0", "1\t1.25"]
    assert (live / "plots" / "metrics" / "kl.tsv").read_text().splitlines() == ["step\tkl", "1\t0.5"]
    assert json.loads((live / "metrics.json").read_text())["loss"] == 1.25


def test_summary_after_a_resume_without_the_live_folder_covers_the_whole_run(workdir):
    """DVC deletes results/finetune/live (a non-persisted output) before a rerun: the resumed run's
    summary must still start at step 1, from the history kept in the checkpoint."""
    import shutil

    run_stage("finetune.py", *finetune_args(workdir, "straight"), cwd=workdir, check=True)
    killed = run_stage("finetune.py", *finetune_args(workdir, "resumed", "ckpt"), cwd=workdir, env=kill_at(2))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    shutil.rmtree(workdir / "results-resumed" / "live")
    run_stage("finetune.py", *finetune_args(workdir, "resumed", "ckpt"), cwd=workdir, check=True)
    straight, resumed = (json.loads((workdir / f"results-{out}" / "summary.json").read_text())
                         for out in ("straight", "resumed"))
    assert resumed["first_loss"] == straight["first_loss"] and resumed["final_loss"] == straight["final_loss"]
    assert resumed["steps"] == straight["steps"]
