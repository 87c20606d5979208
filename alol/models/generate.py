"""Batched generation from a policy, cut at stop strings; the one place prompts become replies."""

from __future__ import annotations

import dataclasses

import torch

from alol.models.logprobs import encode_prompts
from alol.models.padding import pad_left
from alol.core.shard import map_blocks


@dataclasses.dataclass
class GenerationConfig:
    """How replies are generated (validation and evaluation)."""

    max_new_tokens: int = 40
    """Upper bound on reply length."""
    num_beams: int = 1
    """1: greedy (default) or sampling; > 1: beam search (the reference's small tasks: 2)."""
    do_sample: bool = False
    """Sample instead of greedy / beam decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (with do_sample)."""
    temperature: float = 1.0
    """Sampling temperature (with do_sample)."""
    repetition_penalty: float = 1.0
    """> 1 discourages repeats (the reference's small tasks: 2.5)."""
    stop_strings: list[str] = dataclasses.field(default_factory=list)
    """Stop at, and cut the reply before, any of these strings; EOS always stops."""
    batch_size: int = 16
    """Prompts per generate() call (sorted by length to limit padding)."""


def generate(model, tokenizer, prompts: list[str], cfg: GenerationConfig, max_prompt_tokens: int, seed: int = 0,
             description: str | None = "generating") -> tuple[list[str], int]:
    """Replies in the order of `prompts`, and the number of generated tokens.

    Prompts are sorted by length and cut into batches of `cfg.batch_size`; under N processes each
    takes every N-th batch (alol.core.shard). Each batch seeds its own sampling, so sampled replies do
    not depend on the number of processes either."""
    results = generate_ids(model, tokenizer, prompts, cfg, max_prompt_tokens, seed, description)
    return [r.text for r in results], sum(r.tokens for r in results)


@dataclasses.dataclass
class Rollout:
    """One generated reply: its prompt's ids, the reply's ids (EOS included when the reply ended
    with it, as `encode_completion` lays out a trained reply) and its text (cut at a stop string)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    ended: bool = False
    """The reply ended with EOS (else it was cut at max_new_tokens or a stop string)."""

    @property
    def tokens(self) -> int:
        """Generated tokens before EOS (what `generate` counts)."""
        return len(self.completion_ids) - (1 if self.ended else 0)


@torch.inference_mode()
def generate_ids(model, tokenizer, prompts: list[str], cfg: GenerationConfig, max_prompt_tokens: int, seed: int = 0,
                 description: str | None = "generating") -> list[Rollout]:
    """`generate` with the token ids kept (online RL trains on exactly the sampled tokens)."""
    model.eval()
    device = next(model.parameters()).device
    encoded = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id

    def batch(number: int, idx: list[int]) -> list[Rollout]:
        input_ids, attention = pad_left([encoded[i] for i in idx], pad)  # every prompt ends where generation starts
        width = input_ids.shape[1]
        torch.manual_seed(seed + number)
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), max_new_tokens=cfg.max_new_tokens,
            num_beams=cfg.num_beams, do_sample=cfg.do_sample, top_p=cfg.top_p if cfg.do_sample else None,
            temperature=cfg.temperature if cfg.do_sample else None, repetition_penalty=cfg.repetition_penalty,
            stop_strings=cfg.stop_strings or None, tokenizer=tokenizer if cfg.stop_strings else None,
            pad_token_id=pad, eos_token_id=eos, use_cache=True)
        results = []
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            ended = eos in new
            if ended:
                new = new[:new.index(eos)]
            elif pad != eos:  # a row stopped at a stop string is padded to the batch's length
                while new and new[-1] == pad:
                    new.pop()
            text = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), cfg.stop_strings)
            results.append(Rollout(encoded[i], new + [eos] if ended else new, text, ended))
        return results

    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    return map_blocks(batch, order, cfg.batch_size, description)


def cut_at_stop(text: str, stop_strings: list[str]) -> str:
    for stop in stop_strings:
        if stop in text:
            text = text[:text.index(stop)]
    return text.strip()
