"""Plots DVC renders (JSON data) and their PNG twins (matplotlib) for people without DVC."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from alol.core.io import atomic_path, write_json


def histograms(samples: dict[str, np.ndarray], bins: int = 20) -> list[dict]:
    """Shared-bin histograms as rows {bin, <source>: fraction of its replies, ...}."""
    values = np.concatenate([v for v in samples.values() if len(v)])
    edges = np.histogram_bin_edges(values, bins=bins)
    counts = {name: np.histogram(v, bins=edges)[0] / max(len(v), 1) for name, v in samples.items()}
    centers = (edges[:-1] + edges[1:]) / 2
    return [{"bin": float(c), **{name: float(counts[name][i]) for name in samples}} for i, c in enumerate(centers)]


def reward_distribution_plots(generations: pl.DataFrame, gold: pl.DataFrame, baseline: pl.DataFrame | None,
                              results: Path) -> None:
    """results/reward_distribution.json (total reward; policy vs baseline vs gold) and a PNG with
    every reward component."""
    columns = ["reward", *sorted(c for c in generations.columns if c.startswith("reward_"))]
    sources = {"policy": generations, "gold": gold}
    if baseline is not None:
        sources = {"policy": generations, "reference": baseline, "gold": gold}
    write_json(histograms({name: frame["reward"].to_numpy() for name, frame in sources.items()}),
               results / "reward_distribution.json")
    save_figure(results / "reward_distribution.png", columns,
                {name: {c: frame[c].to_numpy() for c in columns if c in frame.columns} for name, frame in sources.items()})


def save_figure(path: Path, columns: list[str], data: dict[str, dict[str, np.ndarray]], shares: bool = False) -> None:
    """One histogram per column, a line per source. `shares`: each bar is the share of that source's
    replies, for sources of different sizes (one reply per prompt vs one per prompt and seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3.0), squeeze=False)
    for ax, column in zip(axes[0], columns):
        present = {name: values[column] for name, values in data.items() if column in values}
        edges = np.histogram_bin_edges(np.concatenate(list(present.values())), bins=20)
        for name, values in present.items():
            weights = np.full(len(values), 1 / len(values)) if shares else None
            ax.hist(values, bins=edges, weights=weights, histtype="step", linewidth=1.5,
                    label=f"{name} (mean {values.mean():.3f})")
        ax.set_title(column)
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("share of replies" if shares else "replies")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def bar_chart(path: Path, labels: list[str], values: list[float], lows: list[float], highs: list[float],
              title: str, baseline: float | None = None) -> None:
    """Horizontal bars with error bars (the comparison across algorithms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(labels) + 1.2))
    y = np.arange(len(labels))
    errors = np.array([np.subtract(values, lows), np.subtract(highs, values)])
    ax.barh(y, values, xerr=errors, color="#4c78a8", capsize=3)
    if baseline is not None:
        ax.axvline(baseline, color="black", linewidth=1, linestyle="--")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def curves_chart(path: Path, curves: dict[tuple[str, int], list[dict]], title: str) -> None:
    """Validation reward against optimizer steps, one line per (algorithm, seed), a colour per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(a for a, _ in curves))}
    for (name, seed), points in curves.items():
        if points:
            ax.plot([p["step"] for p in points], [p["reward"] for p in points], marker="o", color=colours[name],
                    label=f"{name} (seed {seed})", alpha=0.85)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation reward")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
