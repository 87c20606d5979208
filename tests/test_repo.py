"""The repository's promises to a new user."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(readme) == 2, "the README starts with exactly two commands"
    assert readme[0].endswith("dvc repro") and readme[1].endswith("pytest")
    assert readme[1] in (REPO / ".ci" / "run").read_text().splitlines()


def test_readme_and_docs_links_point_at_committed_files():
    """Every relative link and image in README.md, docs/*.md and pipelines/*/README.md names a file
    in the repository (the results moved to docs/ must not leave a link behind), and every
    `#anchor` into a markdown file names one of its headings."""
    import re

    def anchors(path):
        return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                for line in path.read_text().splitlines() if line.startswith("#")}

    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "pipelines").glob("*/README.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken
