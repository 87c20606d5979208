"""The repository's promises to a new user."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(readme) == 2, "the README starts with exactly two commands"
    assert readme[0].endswith("dvc repro") and readme[1].endswith("pytest")
    assert readme[1] in (REPO / ".ci" / "run").read_text().splitlines()
