"""Tokenised (prompt, completion) rows, left-padded batches, and completion-only log-probs: the ONE
log-prob forward (`forward`), used by training (`completion_logps`) and by every pass over a table
(`forward_rows`: the reference's stored log-probs, the prompt states of the value head, a policy's
log-probs of its own replies).

Batches are LEFT-padded so that every completion ends at the last position: the LM head then
runs only on the last K + 1 positions (K = longest completion in the batch) through
transformers' `logits_to_keep`, never on prompt tokens we do not train on. With a 49k
vocabulary the head is about a fifth of a small model's forward cost.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from alol.core.shard import map_blocks
from alol.models.padding import pad_left


@dataclasses.dataclass
class Example:
    prompt_ids: list[int]
    completion_ids: list[int]
    """The completion's tokens, EOS included unless the reply was cut at the length limit."""

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def encode_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int) -> list[list[int]]:
    """Prompts as the model was trained to read them: BOS first when the tokenizer adds one (LLaMA),
    nothing added otherwise (SmolLM2's chat template already starts its own turn), the text
    left-truncated so that the end, where the reply starts, is kept (BOS stays in front).

    The one place prompts become ids: training, the reference pass, the value head and generation."""
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is None or tokenizer("a", add_special_tokens=True)["input_ids"][:1] != [bos]:
        return [p[-max_prompt_tokens:] for p in ids]
    return [[bos] + p[len(p) - max_prompt_tokens + 1:] if len(p) >= max_prompt_tokens else [bos] + p for p in ids]


def encode_completion(ids: list[int], eos: int, max_completion_tokens: int) -> list[int]:
    """The reply and its EOS when it fits; a reply cut at the limit gets no EOS (it did not end)."""
    return ids + [eos] if len(ids) < max_completion_tokens else ids[:max_completion_tokens]


def encode(tokenizer, prompts: list[str], completions: list[str], max_prompt_tokens: int,
           max_completion_tokens: int) -> list[Example]:
    """Prompt left-truncated, completion right-truncated; EOS is part of y when the reply is whole."""
    prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    return [Example(p, encode_completion(c, tokenizer.eos_token_id, max_completion_tokens))
            for p, c in zip(prompt_ids, completion_ids)]


def collate(examples: list[Example], pad_id: int, extras: dict[str, list] | None = None) -> dict[str, torch.Tensor]:
    """Left-padded input_ids / attention_mask / position_ids, and (B, K) completion tensors.

    `extras` maps a name to one value per example: scalars become (B,) tensors; per-token lists
    (like the reference's token log-probs) are right-aligned into (B, K) like the completion.
    """
    input_ids, attention = pad_left([e.prompt_ids + e.completion_ids for e in examples], pad_id)
    completion_mask = pad_left([e.completion_ids for e in examples])[1].float()
    k = completion_mask.shape[1]
    out = {"input_ids": input_ids, "attention_mask": attention,
           "position_ids": (attention.cumsum(-1) - 1).clamp(min=0), "completion_mask": completion_mask}
    for name, values in (extras or {}).items():
        if np.ndim(values[0]) == 0:
            out[name] = torch.tensor(np.asarray(values, dtype=np.float32))
        else:
            out[name] = pad_left([np.asarray(v, dtype=np.float32) for v in values], 0.0, torch.float32, k)[0]
    return out


def forward(model, batch: dict[str, torch.Tensor], states: bool = False):
    """THE log-prob forward, shared by training and every pass over a table (`forward_rows`), so that
    a policy starting at the reference reproduces the reference's stored log-probs to the last bit
    (the importance ratio is exactly 1 at step 0). (B, K) log pi(y_t | x, y_<t) at the last K
    positions (padding NOT masked), and the model's output (hidden states with `states`)."""
    k = batch["completion_mask"].shape[1]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], logits_to_keep=k + 1, use_cache=False,
                **({"output_hidden_states": True} if states else {}))
    logits = out.logits[:, :-1].float()
    targets = batch["input_ids"][:, -k:] if k else batch["input_ids"][:, :0]  # [:, -0:] would be every token
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1), out


def completion_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, K) log pi(y_t | x, y_<t) on completion tokens (0 on padding), logits only where needed."""
    return completion_logps_and_states(model, batch, states=False)[0]


def completion_logps_and_states(model, batch: dict[str, torch.Tensor], states: bool = True):
    """completion_logps, and (B, K, d) the last layer's hidden states at the positions that predict
    each completion token (the states a value head reads: V(x, y_<t)); None with states=False."""
    k = batch["completion_mask"].shape[1]
    logps, out = forward(model, batch, states)
    hidden = out.hidden_states[-1][:, -(k + 1):-1] if states else None
    return logps * batch["completion_mask"], hidden


@torch.inference_mode()
def forward_rows(model, examples: list[Example], pad_id: int, batch_size: int = 16, want_states: bool = True,
                 value_head=None, description: str | None = "reference pass") -> tuple[list, list]:
    """One frozen pass of `model` over (prompt, completion) rows: (token log-probs per completion, per
    row: the prompt states (L_i, d), or V(x) with `value_head`, or None), in input order.

    Run on the reference it gives the `ref_token_logps` column every ratio-based loss reads instead of
    a second model while training, and the states the value head reads, in the same pass; run on a
    policy, the log-probs of its replies. Rows are length-sorted and cut into batches of `batch_size`;
    under N processes each takes every N-th batch (alol.core.shard)."""
    model.eval()
    device = next(model.parameters()).device
    with_states = want_states or value_head is not None

    def batch_pass(number: int, idx: list[int]) -> list[tuple[list[float], object]]:
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        k = batch["completion_mask"].shape[1]
        logps, out = forward(model, batch, with_states)
        logps = logps.cpu()
        width = batch["input_ids"].shape[1]
        token_logps, states = [], []
        for row, i in enumerate(idx):
            n = len(examples[i].completion_ids)
            token_logps.append(logps[row, k - n:].tolist())
            if with_states:
                first = width - examples[i].length  # left padding
                states.append(out.hidden_states[-1][row, first:width - n].float())
        if value_head is not None:  # V(x) here: the states of a whole table never need to be in memory
            states = [float(v) for v in value_head.predict(states)]
        elif want_states:
            states = [s.cpu().clone() for s in states]
        else:
            states = [None] * len(idx)
        return list(zip(token_logps, states))

    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    results = map_blocks(batch_pass, order, batch_size, description)
    return [t for t, _ in results], [s for _, s in results]


def length_grouped(indices: list[int], lengths: list[int], micro_batch: int) -> list[list[int]]:
    """Split one optimizer step's rows into micro-batches of similar length (less padding).

    The step's update is a sum over all its rows, so regrouping them changes nothing but speed."""
    order = sorted(indices, key=lambda i: lengths[i])
    return [order[i:i + micro_batch] for i in range(0, len(order), micro_batch)]
