"""What every stage command shows a user: a one-line description in --help."""

from __future__ import annotations

import ast

import pytest

from conftest import REPO, run_stage

STAGES = sorted(p.name for p in (REPO / "stages").glob("*.py"))


@pytest.mark.parametrize("script", STAGES)
def test_help_starts_with_the_stage_description(script):
    doc = ast.get_docstring(ast.parse((REPO / "stages" / script).read_text()))
    first = " ".join(doc.split("\n\n")[0].split())
    proc = run_stage(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert first[:60] in " ".join(proc.stdout.replace("│", " ").split())
