"""The benchmark's arithmetic (its runs are not tests: they take minutes and need the real model)."""

import json
from pathlib import Path

import pytest

from alol.tools.bench import report, step_flops


def test_step_flops_count_what_each_case_computes():
    """body 100 params, head 10 (d x V), a step of P = 30 prompt and C = 10 completion tokens:
    alol:  6 x 100 x 40 + 6 x 10 x 10 = 24000 + 600 = 24600 (the head only at the 10 predicting positions)
    c:     + reference forward 2 x 100 x 40 + 2 x 10 x 10 = 8200 -> 32800
    TRL:   6 x 110 x 40 = 26400 (logits everywhere, = 6N); f adds 2 x 110 x 40 = 8800 -> 35200"""
    for case in ("a", "a_compile", "b", "e"):
        assert step_flops(case, body=100, head=10, prompt_tokens=30, completion_tokens=10) == 24600
    assert step_flops("c", 100, 10, 30, 10) == 32800
    assert step_flops("d", 100, 10, 30, 10) == step_flops("f_pre", 100, 10, 30, 10) == 26400
    assert step_flops("f", 100, 10, 30, 10) == 35200


def test_report_ratios_and_mfu_by_hand():
    cases = {"a": {"step_seconds": 2.0, "tokens_per_second": 500.0, "peak_rss_mib": 1000.0, "flops_per_second": 3.0e11},
             "b": {"step_seconds": 2.1, "tokens_per_second": 480.0, "peak_rss_mib": 1020.0},
             "c": {"step_seconds": 3.0, "tokens_per_second": 330.0, "peak_rss_mib": 1500.0},
             "d": {"step_seconds": 3.0, "tokens_per_second": 250.0, "peak_rss_mib": 1400.0},
             "e": {"step_seconds": 4.0, "tokens_per_second": 600.0, "peak_rss_mib": 1100.0},
             "f": {"step_seconds": 8.0, "tokens_per_second": 300.0, "peak_rss_mib": 2000.0},
             "f_pre": {"error": "exit 1"}}
    for name in "bcdef":
        cases[name]["flops_per_second"] = 5.0e10
    out = report(cases, peak=1.0e11, params=100_000_000)
    targets = out["targets"]
    assert targets["b/a step time (<= 1.05)"] == pytest.approx(2.1 / 2.0)
    assert targets["b/a peak memory (<= 1.05)"] == pytest.approx(1020 / 1000)
    assert targets["a/d tokens/s (>= 1.3)"] == pytest.approx(500 / 250)
    assert targets["e/best f tokens/s (>= 1.3)"] == pytest.approx(600 / 300)  # f_pre failed: f is the best
    # MFU = FLOP/s done / peak = 3e11 / 1e11 = 3.0 (a made-up peak; real runs are < 1)
    assert targets["a MFU (>= 0.75)"] == pytest.approx(3.0)


def test_benchmark_page_is_the_committed_benchmark():
    """docs/benchmarks.md shows results/bench/bench.json, rounded as printed, and the README links it."""
    repo = Path(__file__).resolve().parents[1]
    bench = json.loads((repo / "results" / "bench" / "bench.json").read_text())
    cases = (repo / "docs" / "benchmarks.md").read_text()
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in cases.splitlines() if line.startswith("| "))}
    for case in bench["cases"]:
        expected = [f"{case['step_seconds']:.2f}", f"{case['tokens_per_second']:.0f}", f"{case['peak_rss_mib']:.0f}",
                    f"{case['mfu']:.2f}"]
        assert rows[case["case"]][2:] == expected, case["case"]
    assert f"{bench['matmul_gflops']:.0f} GFLOP/s (`results/bench/bench.json`)" in cases
    for target, value in bench["targets"].items():
        assert f"{value:.3f}" in cases, target
    assert "(docs/benchmarks.md)" in (repo / "README.md").read_text()
