"""Ragged rows -> one padded tensor and its mask: the one place batches are padded.

Left padding puts every row's end at the last position (a causal LM's prompt before generation,
and completions, whose tokens the LM head reads at the last K positions); right padding puts
every row's start at position 0 (classifiers that read the last real token at `mask.sum(1) - 1`,
the value head's prompt states).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch


def pad(rows: Sequence, side: Literal["left", "right"], value: float = 0, dtype: torch.dtype = torch.long,
        width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W, ...) `rows` padded with `value` to W (`width`, else the longest row), and the (B, W)
    long mask that is 1 on real entries. A row is a list of numbers, an array or a (L, ...) tensor
    (its trailing dims are kept)."""
    width = max(len(r) for r in rows) if width is None else width
    first = rows[0]
    trailing = tuple(first.shape[1:]) if isinstance(first, torch.Tensor) else ()
    out = torch.full((len(rows), width, *trailing), value, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        out[i, span] = torch.as_tensor(row, dtype=dtype)
        mask[i, span] = 1
    return out, mask


def pad_left(rows: Sequence, value: float = 0, dtype: torch.dtype = torch.long,
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`pad` on the left: every row ends at the last position."""
    return pad(rows, "left", value, dtype, width)


def pad_right(rows: Sequence, value: float = 0, dtype: torch.dtype = torch.long,
              width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`pad` on the right: every row starts at position 0."""
    return pad(rows, "right", value, dtype, width)
