"""The comparison command: its table from each experiment's metrics, and what it leaves of the user's repo
(params.yaml as written, HEAD on its branch). `dvc exp run` itself is replaced by a fake that writes the
metrics an experiment would."""

import subprocess

import polars as pl
import pytest

from alol.tools import compare as cmp
from alol.core.errors import AlolError
from alol.core.io import write_json

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
PARAMS = "# the user's comment\nalgorithm: a_lol  # kept verbatim\n"


PROMPTS = [f"p{i}" for i in range(8)]
REFERENCE = [1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0]  # mean 2.0


def generations(reward: float) -> dict:
    return {"reward": reward, "reward_safety": reward / 2, "distinct_1": 0.5, "distinct_2": 0.75,
            "distinct_3": 0.875, "length_words": 9.0, "kl": 0.25}


def per_prompt(shift: float) -> pl.DataFrame:
    """Test generations whose reward is the reference's + `shift` on every prompt (safety: half)."""
    reward = [r + shift for r in REFERENCE]
    return pl.DataFrame({"prompt_id": PROMPTS, "reward": reward, "reward_safety": [r / 2 for r in reward]})


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "params.yaml").write_text(PARAMS)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], [*GIT, "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    results = tmp_path / "results"
    write_json({"generations": generations(2.0), "gold": {**generations(2.5), "kl": None}},
               results / "evaluate_reference" / "details.json")
    per_prompt(0.0).write_parquet(results / "evaluate_reference" / "generations.parquet")
    write_json({"positive_fraction": 0.625}, results / "plan.json")
    return tmp_path


def fake_experiment(root, gains, seed_shift=lambda seed: 0.0, calls=None):
    """Writes what `dvc exp run -S algorithm=<name> -S plan.seed_offset=<s>` would (every prompt's reward
    moved by gains[name] + seed_shift(s)), rewrites params.yaml as DVC does, and leaves HEAD detached
    the way a killed `dvc exp run` does."""
    def run(algorithm, root_, settings=()):
        assert root_ == root
        seed = int(next(s.split("=")[1] for s in settings if s.startswith("++plan.seed_offset=")))
        if calls is not None:
            calls.append((algorithm, seed, list(settings)))
        gain = gains[algorithm] + seed_shift(seed)
        write_json({"generations": generations(2.0 + gain),
                    "vs_baseline": {"reward": {"gain": gain, "ci_low": gain - 0.125, "ci_high": gain + 0.125,
                                               "win_rate": 0.5 + gain}}},
                   root / "results" / "evaluate" / "details.json")
        per_prompt(gain).write_parquet(root / "results" / "evaluate" / "generations.parquet")
        online = {"generated_tokens": 4096, "rollout_tokens_per_second": 32.0} if algorithm == "ppo" else {}
        write_json({"sampling_strategy": "good_priority" if algorithm.startswith("a_lol") else "uniform",
                    "steps": 13, "train_seconds": 60.0, "tokens_per_second": 150.0, **online},
                   root / "results" / "finetune" / "summary.json")
        (root / "params.yaml").write_text(f"algorithm: {algorithm}\n")
        subprocess.run(["git", "checkout", "-q", "--detach"], cwd=root, check=True)
        return 70.0
    return run


def test_compare_table_and_repo_left_as_found(repo, monkeypatch):
    gains = {"nll": 0.25, "a_lol": 0.125}
    monkeypatch.setattr(cmp, "run_experiment", fake_experiment(repo, gains))
    frame = cmp.compare(["a_lol", "nll"], repo, repo / "results" / "compare")

    assert (repo / "params.yaml").read_text() == PARAMS
    assert cmp.git_branch(repo) == "main"
    # rows: the reference, the algorithms in the order asked for, the gold replies
    assert frame["algorithm"].to_list() == ["reference", "a_lol", "nll", "gold (test replies)"]
    a_lol = frame.row(1, named=True)
    # every prompt moved by exactly +0.125: the mean, the gain and both ends of its interval are 0.125
    assert (a_lol["reward"], a_lol["gain"], a_lol["gain_ci_low"], a_lol["gain_ci_high"]) == (2.125, 0.125, 0.125,
                                                                                              0.125)
    assert a_lol["reward_safety"] == pytest.approx(2.125 / 2)  # the component means of its run
    assert a_lol["positive_fraction"] == 0.625 and a_lol["steps"] == 13 and a_lol["experiment_seconds"] == 70.0
    assert frame.row(2, named=True)["positive_fraction"] is None  # uniform sampling uses no positive fraction
    assert frame.row(3, named=True)["reward"] == 2.5 and frame.row(3, named=True)["gain"] is None
    out = repo / "results" / "compare"
    assert pl.read_csv(out / "table.csv").height == 4
    md = (out / "table.md").read_text().splitlines()
    assert "Holm-corrected over the 3 comparisons" in md[0]  # a_lol and nll vs reference, a_lol vs nll
    assert md[2].startswith("| algorithm | seeds | reward | reward_seed_sd | gain | gain_ci_low | gain_ci_high | p |")
    versus = pl.read_csv(out / "versus.csv").row(0, named=True)
    assert versus["comparison"] == "a_lol - nll" and versus["diff"] == pytest.approx(-0.125)
    assert versus["diff_safety"] == pytest.approx(-0.0625)
    for name in ("reward.png", "distribution.png", "components.md", "runs/a_lol-seed0.parquet"):
        assert (out / name).stat().st_size > 0


def test_seeds_run_every_pair_and_widen_the_interval(repo, monkeypatch):
    """Seeds 0, 1, 2 move a_lol by -0.25, 0, +0.25 on every prompt: its mean gain is the gain itself, the
    spread over seeds is sd(-0.25, 0, 0.25) = 0.25, and the interval, which resamples seeds, is wider
    than the zero width that prompts alone would give. The workspace's own run (a_lol, seed 0) is last."""
    calls = []
    shifts = {0: -0.25, 1: 0.0, 2: 0.25}
    monkeypatch.setattr(cmp, "run_experiment", fake_experiment(repo, {"nll": 0.0, "a_lol": 0.5},
                                                               lambda s: shifts[s], calls))
    frame = cmp.compare(["a_lol", "nll"], repo, repo / "results" / "compare", seeds=[0, 1, 2], eval_every=4,
                        settings=["plan.steps=60"])
    assert [(a, s) for a, s, _ in calls] == [("nll", 0), ("a_lol", 1), ("nll", 1), ("a_lol", 2), ("nll", 2),
                                             ("a_lol", 0)]
    assert all(settings[1:] == ["plan.steps=60", "finetune.train.eval_every=4"] for *_, settings in calls)
    a_lol = frame.row(1, named=True)
    assert a_lol["seeds"] == 3 and a_lol["gain"] == pytest.approx(0.5)
    assert a_lol["reward_seed_sd"] == pytest.approx(0.25)
    assert a_lol["gain_ci_low"] < 0.5 - 0.1 and a_lol["gain_ci_high"] > 0.5 + 0.1
    runs = pl.read_csv(repo / "results" / "compare" / "runs.csv")
    assert runs.height == 6 and sorted(runs["seed"].to_list()) == [0, 0, 1, 1, 2, 2]


def test_holm_over_every_comparison(repo, monkeypatch):
    """p_holm is the raw p times the number of comparisons still in play (capped at 1, monotone)."""
    monkeypatch.setattr(cmp, "run_experiment", fake_experiment(repo, {"nll": 0.0, "wbc": 0.0, "a_lol": 0.5}))
    cmp.compare(["nll", "wbc", "a_lol"], repo, repo / "results" / "compare")
    saved = __import__("json").loads((repo / "results" / "compare" / "table.json").read_text())
    assert saved["comparisons"] == 5  # three vs the reference, a_lol vs nll, a_lol vs wbc
    nll = next(r for r in saved["algorithms"] if r["algorithm"] == "nll")
    assert (nll["p"], nll["p_holm"]) == (1.0, 1.0)  # identical to the reference on every prompt
    assert [v["comparison"] for v in saved["versus"]] == ["a_lol - nll", "a_lol - wbc"]


def test_versus_must_name_algorithms_that_run(repo, monkeypatch):
    monkeypatch.setattr(cmp, "run_experiment", lambda *a: pytest.fail("ran before checking --versus"))
    with pytest.raises(AlolError, match="--versus names wbc"):
        cmp.compare(["a_lol", "nll"], repo, repo / "results" / "compare", versus=[("a_lol", "wbc")])


def test_online_rows_carry_their_cost(repo, monkeypatch):
    """ppo's run has the tokens it generated while training and its rollout speed; an offline algorithm
    generated none while training."""
    monkeypatch.setattr(cmp, "run_experiment", fake_experiment(repo, {"nll": 0.25, "ppo": 0.125}))
    cmp.compare(["nll", "ppo"], repo, repo / "results" / "compare")
    rows = {r["algorithm"]: r for r in pl.read_csv(repo / "results" / "compare" / "runs.csv").iter_rows(named=True)}
    assert (rows["ppo"]["generated_tokens"], rows["ppo"]["rollout_tokens_per_second"]) == (4096, 32.0)
    assert (rows["nll"]["generated_tokens"], rows["nll"]["rollout_tokens_per_second"]) == (0, None)
    assert rows["ppo"]["train_tokens_per_second"] == 150.0 and rows["ppo"]["experiment_seconds"] == 70.0


def test_compare_refuses_a_detached_head(repo, monkeypatch):
    subprocess.run(["git", "checkout", "-q", "--detach"], cwd=repo, check=True)
    monkeypatch.setattr(cmp, "run_experiment", lambda *a: pytest.fail("ran an experiment on a detached HEAD"))
    with pytest.raises(AlolError, match="detached.*git checkout"):
        cmp.compare(["nll"], repo, repo / "results" / "compare")


def test_reattach_only_at_the_branch_tip(repo):
    subprocess.run(["git", "checkout", "-q", "--detach"], cwd=repo, check=True)
    cmp.reattach(repo, "main")
    assert cmp.git_branch(repo) == "main"

    (repo / "new.txt").write_text("x")
    subprocess.run(["git", "add", "new.txt"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-qm", "second"], cwd=repo, check=True)
    subprocess.run(["git", "checkout", "-q", "HEAD~1"], cwd=repo, check=True)  # detached, not at main's tip
    cmp.reattach(repo, "main")
    assert cmp.git_branch(repo) is None


def test_unknown_algorithm_lists_the_valid_ones(repo):
    with pytest.raises(AlolError, match="unknown algorithm.*a_lol_kl"):
        cmp.compare(["a_lol", "sft"], repo, repo / "results" / "compare")


def test_resume_reuses_finished_runs(repo, monkeypatch):
    """An interrupted comparison goes on where it stopped: with resume, runs saved in out/runs are read
    back, not rerun; without it every run is redone."""
    out = repo / "results" / "compare"
    calls = []
    monkeypatch.setattr(cmp, "run_experiment", fake_experiment(repo, {"nll": 0.25, "a_lol": 0.125}, calls=calls))
    first = cmp.compare(["a_lol", "nll"], repo, out, seeds=[0, 1])
    assert len(calls) == 4
    (out / "runs" / "nll-seed1.json").unlink()  # as if killed during nll seed 1
    calls.clear()
    again = cmp.compare(["a_lol", "nll"], repo, out, seeds=[0, 1], resume=True)
    assert [(a, s) for a, s, _ in calls] == [("nll", 1)]
    assert again.select("algorithm", "reward", "gain").equals(first.select("algorithm", "reward", "gain"))
    calls.clear()
    cmp.compare(["a_lol", "nll"], repo, out, seeds=[0, 1])
    assert len(calls) == 4


def test_a_bad_seeds_option_fails_the_way_a_stage_does(tmp_path):
    # through alol.core.stage.exit_with_error, as every stage's AlolError: one red line naming the
    # command and the option, no traceback, exit status 1
    import sys

    proc = subprocess.run([sys.executable, "-m", "alol.compare", "--seeds", "0,x", "--root", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error (compare): --seeds '0,x': invalid literal for int()")
    assert "write plan.seed_offset values as integers, comma-separated (e.g. 0,1,2)." in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_parse_seeds():
    assert cmp.parse_seeds(None) is None and cmp.parse_seeds("") is None
    assert cmp.parse_seeds("0, 1,2,") == [0, 1, 2]
    with pytest.raises(AlolError, match=r"--seeds '1\.5'"):
        cmp.parse_seeds("1.5")


def test_redraw_gives_each_seed_its_own_reference_and_keeps_test_prompts(repo, monkeypatch):
    """--redraw: every run also sets clean.splits.redraw=<seed> (a dataset-task pipeline), and each seed's
    reference is its own. Seed s moves both the reference and a_lol's replies by the same shift(s), a_lol 0.5
    above its reference on every prompt: paired by seed, the gain is exactly 0.5 with a zero-width interval
    (against one shared reference the shifts would widen it), while the reward itself spreads over seeds."""
    (repo / "params.yaml").write_text("task: dataset\nalgorithm: a_lol\n")
    calls = []
    shifts = {0: -0.25, 1: 0.0, 2: 0.25}
    run = fake_experiment(repo, {"a_lol": 0.5}, lambda s: shifts[s], calls)

    def with_reference(algorithm, root_, settings=()):
        seed = int(next(s.split("=")[1] for s in settings if s.startswith("++plan.seed_offset=")))
        assert f"++clean.splits.redraw={seed}" in settings
        per_prompt(shifts[seed]).write_parquet(repo / "results" / "evaluate_reference" / "generations.parquet")
        return run(algorithm, root_, settings)

    monkeypatch.setattr(cmp, "run_experiment", with_reference)
    frame = cmp.compare(["a_lol"], repo, repo / "results" / "compare", seeds=[0, 1, 2], redraw=True)
    a_lol = frame.row(1, named=True)
    assert (a_lol["gain"], a_lol["gain_ci_low"], a_lol["gain_ci_high"]) == pytest.approx((0.5, 0.5, 0.5))
    assert a_lol["reward_seed_sd"] == pytest.approx(0.25)
    assert sorted(p.name for p in (repo / "results" / "compare" / "runs").glob("reference-*")) == [
        "reference-seed0.parquet", "reference-seed1.parquet", "reference-seed2.parquet"]
    shifted = per_prompt(0.0).with_columns(pl.Series("prompt_id", [f"q{i}" for i in range(8)]))
    with pytest.raises(AlolError, match="reference seed 1: its test prompts differ"):
        cmp.summarise({("a_lol", 1): per_prompt(0.5)}, [], {0: per_prompt(0.0), 1: shifted}, [], 100)


def test_redraw_needs_the_dataset_task(repo):
    (repo / "params.yaml").write_text("task: hh\nalgorithm: a_lol\n")
    with pytest.raises(AlolError, match="--redraw redraws the dataset task's split"):
        cmp.compare(["a_lol"], repo, repo / "results" / "compare", redraw=True)
