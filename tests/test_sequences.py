"""How text becomes ids: BOS where the model expects it, no EOS on a cut reply, padding changes nothing."""

from __future__ import annotations

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from alol.models.generate import GenerationConfig, generate
from alol.models.load import ModelConfig, load_policy
from alol.models.logprobs import collate, completion_logps, encode, encode_prompts, forward_rows
from alol.models.padding import pad_left, pad_right
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
    batched, states = forward_rows(model, examples, tiny_tokenizer.pad_token_id, batch_size=8)
    alone, alone_states = forward_rows(model, examples, tiny_tokenizer.pad_token_id, batch_size=1)
    for a, b, s, t in zip(batched, alone, states, alone_states):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)
        torch.testing.assert_close(s, t, atol=1e-5, rtol=0)


def test_the_stored_reference_logps_equal_the_training_forward_to_the_last_bit(tmp_path, tiny_tokenizer):
    """The importance ratio is exactly 1 at step 0: the log-probs the reference pass stores (ref_token_logps)
    are what the training forward computes on the same model and batch, bit for bit."""
    build_tiny_llama(tmp_path / "m", tiny_tokenizer)
    model = load_policy(tmp_path / "m", ModelConfig(), trainable=False)
    examples = encode(tiny_tokenizer, PROMPTS, PROMPTS[::-1], 64, 16)
    stored, _ = forward_rows(model, examples, tiny_tokenizer.pad_token_id, batch_size=len(examples), want_states=False)
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)  # the pass's one batch
    batch = collate([examples[i] for i in order], tiny_tokenizer.pad_token_id,
                    {"ref_token_logps": [stored[i] for i in order]})
    with torch.no_grad():
        trained = completion_logps(model, batch)
    assert torch.equal(trained, batch["ref_token_logps"])  # padding: 0 in both
    assert torch.equal(torch.exp(trained - batch["ref_token_logps"]), torch.ones_like(trained))


def test_padding_by_hand():
    ids, mask = pad_left([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == torch.long and mask.dtype == torch.long
    ids, mask = pad_right([[5], [], [6, 7]], 9)
    assert ids.tolist() == [[5, 9], [9, 9], [6, 7]] and mask.tolist() == [[1, 0], [0, 0], [1, 1]]
    values, _ = pad_left([[0.5], [1.5, 2.5]], 0.0, torch.float32, width=3)  # a fixed width
    assert values.tolist() == [[0.0, 0.0, 0.5], [0.0, 1.5, 2.5]] and values.dtype == torch.float32
    states, mask = pad_right([torch.ones(1, 2), torch.full((2, 2), 3.0)], 0.0, torch.float32)  # (L_i, d) rows
    assert states.tolist() == [[[1.0, 1.0], [0.0, 0.0]], [[3.0, 3.0], [3.0, 3.0]]] and mask.tolist() == [[1, 0], [1, 1]]


def test_generate_and_score_scores_the_replies_generate_gives(tmp_path, tiny_tokenizer):
    import numpy as np
    import polars as pl

    from alol.evaluation.replies import generate_and_score

    build_tiny_llama(tmp_path / "m", tiny_tokenizer)
    model = load_policy(tmp_path / "m", ModelConfig(), trainable=False)
    frame = pl.DataFrame({"prompt_id": [f"p{i}" for i in range(len(PROMPTS))], "prompt": PROMPTS,
                          "context": PROMPTS, "knowledge": [f"k{i}" for i in range(len(PROMPTS))]})
    seen = {}

    def reward(rows, source, row_ids, description):  # a RewardFunction's call: the reply's length in characters
        seen.update(rows=rows, source=source, row_ids=row_ids)
        return {"reward": np.array([float(len(c)) for c in rows.completions])}

    cfg = GenerationConfig(max_new_tokens=6, batch_size=3, do_sample=True)
    scored = generate_and_score(model, tiny_tokenizer, frame, reward, cfg, 64, 5, "test", "my replies")
    replies, generated = generate(model, tiny_tokenizer, PROMPTS, cfg, 64, 5)
    assert scored.replies == replies and scored.generated_tokens == generated > 0
    assert [r.text for r in scored.rollouts] == replies and scored.seconds > 0
    assert scored.scores["reward"].tolist() == [float(len(r)) for r in replies]
    # the rows' own columns come with each reply; the ids and the source name it in errors
    assert seen["rows"].split == "test" and seen["rows"].prompts == PROMPTS and seen["rows"].completions == replies
    assert list(seen["rows"].columns["knowledge"]) == frame["knowledge"].to_list()
    assert seen["source"] == "my replies" and seen["row_ids"] == frame["prompt_id"].to_list()
