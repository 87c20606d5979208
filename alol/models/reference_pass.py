"""One forward pass of the frozen reference over (prompt, completion) rows.

It yields the reference's per-token log-probs of each completion (the `ref_token_logps`
column every ratio-based loss reads instead of running a second model while training) and
the last-layer states of each prompt (what the value head reads), in the same pass.
"""

from __future__ import annotations

import torch

from alol.models.logprobs import Example, collate
from alol.core.shard import map_blocks


@torch.inference_mode()
def reference_pass(model, examples: list[Example], pad_id: int, batch_size: int = 16, want_states: bool = True,
                   value_head=None, description: str | None = "reference pass") -> tuple[list, list]:
    """(token log-probs per completion, per row: the prompt states (L_i, d), or V(x) with
    `value_head`, or None), in input order. Rows are length-sorted and cut into batches of
    `batch_size`; under N processes each takes every N-th batch (alol.core.shard)."""
    model.eval()
    device = next(model.parameters()).device

    def batch_pass(number: int, idx: list[int]) -> list[tuple[list[float], object]]:
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        k = batch["completion_mask"].shape[1]
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], logits_to_keep=k + 1, use_cache=False,
                    output_hidden_states=want_states or value_head is not None)
        logits = out.logits[:, :-1].float()
        targets = batch["input_ids"][:, -k:] if k else batch["input_ids"][:, :0]
        logps = (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)).cpu()
        width = batch["input_ids"].shape[1]
        token_logps, states = [], []
        for row, i in enumerate(idx):
            n = len(examples[i].completion_ids)
            token_logps.append(logps[row, k - n:].tolist())
            if want_states or value_head is not None:
                first = width - examples[i].length  # left padding
                states.append(out.hidden_states[-1][row, first:width - n].float())
        if value_head is not None:  # V(x) here: the states of a whole table never need to be in memory
            from alol.models.value import predict

            states = [float(v) for v in predict(value_head, states)]
        elif want_states:
            states = [s.cpu().clone() for s in states]
        else:
            states = [None] * len(idx)
        return list(zip(token_logps, states))

    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    results = map_blocks(batch_pass, order, batch_size, description)
    return [t for t, _ in results], [s for _, s in results]
