"""The comparison command: its table from each experiment's metrics, and what it leaves of the user's repo
(params.yaml as written, HEAD on its branch). `dvc exp run` itself is replaced by a fake that writes the
metrics an experiment would."""

import subprocess

import polars as pl
import pytest

from alol import compare as cmp
from alol.errors import AlolError
from alol.io import write_json

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
PARAMS = "# the user's comment\nalgorithm: a_lol  # kept verbatim\n"


def generations(reward: float) -> dict:
    return {"reward": reward, "reward_safety": reward / 2, "distinct_1": 0.5, "distinct_2": 0.75,
            "distinct_3": 0.875, "length_words": 9.0, "kl": 0.25}


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "params.yaml").write_text(PARAMS)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], [*GIT, "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=tmp_path, check=True)
    results = tmp_path / "results"
    write_json({"generations": generations(2.0), "gold": {**generations(2.5), "kl": None}},
               results / "evaluate_reference" / "details.json")
    write_json({"positive_fraction": 0.625}, results / "plan.json")
    return tmp_path


def fake_experiment(root, gains):
    """Writes what `dvc exp run -S algorithm=<name>` would, rewrites params.yaml as DVC does, and
    leaves HEAD detached the way a killed `dvc exp run` does."""
    def run(algorithm, root_):
        assert root_ == root
        gain = gains[algorithm]
        write_json({"generations": generations(2.0 + gain),
                    "vs_baseline": {"reward": {"gain": gain, "ci_low": gain - 0.125, "ci_high": gain + 0.125,
                                               "win_rate": 0.5 + gain}}},
                   root / "results" / "evaluate" / "details.json")
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
    assert (a_lol["reward"], a_lol["gain"], a_lol["gain_ci_low"], a_lol["gain_ci_high"]) == (2.125, 0.125, 0.0, 0.25)
    assert a_lol["positive_fraction"] == 0.625 and a_lol["steps"] == 13 and a_lol["experiment_seconds"] == 70.0
    assert frame.row(2, named=True)["positive_fraction"] is None  # uniform sampling uses no positive fraction
    assert frame.row(3, named=True)["reward"] == 2.5 and frame.row(3, named=True)["gain"] is None
    assert pl.read_csv(repo / "results" / "compare" / "table.csv").height == 4
    md = (repo / "results" / "compare" / "table.md").read_text().splitlines()
    assert md[0].startswith("| algorithm | reward | gain |")
    assert md[3].startswith("| a_lol | 2.125 | 0.125 | 0.000 | 0.250 | 0.625 |")  # reward, gain, CI, win rate
    assert (repo / "results" / "compare" / "reward.png").stat().st_size > 0


def test_online_rows_carry_their_cost(repo, monkeypatch):
    """ppo's row has the tokens it generated while training and its rollout speed; an offline algorithm
    generated none while training; the reference and gold rows have no cost at all."""
    monkeypatch.setattr(cmp, "run_experiment", fake_experiment(repo, {"nll": 0.25, "ppo": 0.125}))
    frame = cmp.compare(["nll", "ppo"], repo, repo / "results" / "compare")
    rows = {r["algorithm"]: r for r in frame.iter_rows(named=True)}
    assert (rows["ppo"]["generated_tokens"], rows["ppo"]["rollout_tokens_per_second"]) == (4096, 32.0)
    assert (rows["nll"]["generated_tokens"], rows["nll"]["rollout_tokens_per_second"]) == (0, None)
    assert rows["ppo"]["train_tokens_per_second"] == 150.0 and rows["ppo"]["experiment_seconds"] == 70.0
    assert rows["reference"]["generated_tokens"] is None


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
