"""How text becomes ids: BOS where the model expects it, no EOS on a cut reply, padding changes nothing."""

from __future__ import annotations

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from alol.models.generate import GenerationConfig, generate
from alol.models.load import ModelConfig, load_policy
from alol.models.reference_pass import reference_pass
from alol.models.logprobs import encode, encode_prompts
from conftest import build_tiny_llama, build_tokenizer

PROMPTS = ["hello there", "what do you like to do for fun", "the weather", "i am fine thanks and you",
           "how are you", "you are", "i like hiking and reading books", "what"]


@pytest.fixture()
def bos_tokenizer():
    """The tiny tokenizer, made to add BOS like LLaMA's (`<s>` first, nothing at the end)."""
    tok = build_tokenizer()
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                              special_tokens=[(bos, tok.bos_token_id)])
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    return tok


def test_prompts_get_bos_when_the_tokenizer_adds_one_and_keep_it_when_cut(bos_tokenizer):
    tok = bos_tokenizer
    text = tok("i am fine thanks and you", add_special_tokens=False)["input_ids"]
    assert len(text) > 4
    full, cut = encode_prompts(tok, ["i am fine thanks and you"] * 2, 64), encode_prompts(tok, ["i am fine thanks and you"], 4)
    assert full[0] == [tok.bos_token_id] + text
    assert cut[0] == [tok.bos_token_id] + text[-3:]  # 4 tokens: BOS and the last 3 (the end is kept)


def test_prompts_get_nothing_when_the_tokenizer_adds_nothing(tiny_tokenizer):
    text = tiny_tokenizer("i am fine thanks and you", add_special_tokens=False)["input_ids"]
    assert encode_prompts(tiny_tokenizer, ["i am fine thanks and you"], 3) == [text[-3:]]


def test_a_cut_reply_has_no_eos_a_whole_one_has(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    long = tiny_tokenizer("i like hiking and reading books", add_special_tokens=False)["input_ids"]
    short = tiny_tokenizer("hi", add_special_tokens=False)["input_ids"]
    assert len(long) > 3 and len(short) < 3
    cut, whole = encode(tiny_tokenizer, ["p", "p"], ["i like hiking and reading books", "hi"], 8, 3)
    assert cut.completion_ids == long[:3] and eos not in cut.completion_ids
    assert whole.completion_ids == short + [eos]


def test_generation_and_the_reference_pass_read_the_same_prompt_ids_as_training(tmp_path, bos_tokenizer):
    build_tiny_llama(tmp_path / "m", bos_tokenizer)
    model = load_policy(tmp_path / "m", ModelConfig(), trainable=False)
    seen = []
    original = model.generate

    def spy(**kwargs):
        seen.extend(row[mask.bool()].tolist() for row, mask in zip(kwargs["input_ids"], kwargs["attention_mask"]))
        return original(**kwargs)

    model.generate = spy
    generate(model, bos_tokenizer, PROMPTS[:3], GenerationConfig(max_new_tokens=2), 64)
    expected = [e.prompt_ids for e in encode(bos_tokenizer, PROMPTS[:3], ["x"] * 3, 64, 8)]
    assert sorted(seen) == sorted(expected) and all(ids[0] == bos_tokenizer.bos_token_id for ids in seen)


def test_batched_generation_equals_one_at_a_time(tmp_path, tiny_tokenizer):
    """Left padding and its attention mask must not change a greedy reply (padding invariance)."""
    build_tiny_llama(tmp_path / "m", tiny_tokenizer)
    model = load_policy(tmp_path / "m", ModelConfig(), trainable=False)
    batched, n_batched = generate(model, tiny_tokenizer, PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=8), 64)
    alone, n_alone = generate(model, tiny_tokenizer, PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=1), 64)
    assert batched == alone and n_batched == n_alone > 0


def test_reference_pass_is_padding_invariant(tmp_path, tiny_tokenizer):
    build_tiny_llama(tmp_path / "m", tiny_tokenizer)
    model = load_policy(tmp_path / "m", ModelConfig(), trainable=False)
    examples = encode(tiny_tokenizer, PROMPTS, PROMPTS[::-1], 64, 16)
    batched, states = reference_pass(model, examples, tiny_tokenizer.pad_token_id, batch_size=8)
    alone, alone_states = reference_pass(model, examples, tiny_tokenizer.pad_token_id, batch_size=1)
    for a, b, s, t in zip(batched, alone, states, alone_states):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)
        torch.testing.assert_close(s, t, atol=1e-5, rtol=0)
