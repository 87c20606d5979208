"""One forward pass of the frozen reference over (prompt, completion) rows.

It yields the reference's per-token log-probs of each completion (the `ref_token_logps`
column every ratio-based loss reads instead of running a second model while training) and
the last-layer states of each prompt (what the value head reads), in the same pass.
"""

from __future__ import annotations

import torch

from alol.sequences import Example, collate


@torch.inference_mode()
def reference_pass(model, examples: list[Example], pad_id: int, batch_size: int = 16,
                   want_states: bool = True) -> tuple[list[list[float]], list[torch.Tensor]]:
    """(token log-probs per completion, prompt states (L_i, d) per row), in input order."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    token_logps: list = [None] * len(examples)
    states: list = [None] * len(examples)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        k = batch["completion_mask"].shape[1]
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"], logits_to_keep=k + 1, use_cache=False,
                    output_hidden_states=want_states)
        logits = out.logits[:, :-1].float()
        targets = batch["input_ids"][:, -k:] if k else batch["input_ids"][:, :0]
        logps = (logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)).cpu()
        width = batch["input_ids"].shape[1]
        for row, i in enumerate(idx):
            n = len(examples[i].completion_ids)
            token_logps[i] = logps[row, k - n:].tolist()
            if want_states:
                first = width - examples[i].length  # left padding
                states[i] = out.hidden_states[-1][row, first:width - n].float().cpu().clone()
    return token_logps, states
