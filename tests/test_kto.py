"""KTO (alol/algorithms/kto.py): the loss and its KL estimate worked by hand, the mismatched pairs, the labels,
and a training step on a tiny model that moves the parameters."""

import math

import numpy as np
import polars as pl
import pytest
import torch

from alol.algorithms import ALGORITHMS, check_algorithm
from alol.algorithms import kto as k
from alol.algorithms.finetune import FinetuneConfig


def test_kto_loss_by_hand():
    # beta 1, z 0. Desirable with r = 0: 1 - sigmoid(0) = 0.5. Undesirable with r = -ln 3:
    # 1 - sigmoid(z - r) = 1 - sigmoid(ln 3) = 1 - 3/4 = 0.25, weighted by lambda_U = 2: 0.5.
    policy = torch.tensor([-5.0, -5.0 - math.log(3)])
    ref = torch.tensor([-5.0, -5.0])
    loss = k.kto(policy, ref, torch.tensor(0.0), torch.tensor([True, False]), beta=1.0, undesirable_weight=2.0)
    assert loss.tolist() == pytest.approx([0.5, 0.5])
    # a KL estimate of ln 3 shifts the reference point: desirable r = 0 now gives 1 - sigmoid(-ln 3) = 3/4
    loss = k.kto(policy[:1], ref[:1], torch.tensor(math.log(3)), torch.tensor([True]), beta=1.0)
    assert loss.item() == pytest.approx(0.75)


def test_kl_estimate_is_the_clamped_detached_mean():
    mine = torch.tensor([1.0, 2.0], requires_grad=True)
    z = k.kl_estimate(mine, torch.tensor([0.0, -1.0]))  # mean(1, 3) = 2
    assert z.item() == pytest.approx(2.0) and not z.requires_grad
    assert k.kl_estimate(torch.tensor([0.5, -1.5]), torch.zeros(2)).item() == 0.0  # mean -0.5, clamped at 0


def test_mismatched_pairs_are_a_seeded_derangement():
    partner = k.mismatched(7, seed=3)
    assert sorted(partner.tolist()) == list(range(7)) and (partner != np.arange(7)).all()
    assert partner.tolist() == k.mismatched(7, seed=3).tolist()
    with pytest.raises(Exception, match="at least 2 train rows"):
        k.mismatched(1, 0)


def test_desirable_from_a_label_or_a_thresholded_reward():
    labelled = pl.DataFrame({"reward": [0.1, 0.9], "label": [True, False]})
    assert k.desirable(labelled, 0.5)[0].tolist() == [True, False]  # the data's own label wins
    scored = pl.DataFrame({"reward": [0.1, 0.5, 0.9, 0.3]})
    wanted, info = k.desirable(scored, 0.5)  # median of [0.1, 0.3, 0.5, 0.9] = 0.4
    assert wanted.tolist() == [False, True, True, False] and "0.4" in info["desirable_from"]


def test_kto_is_one_record_with_its_uniform_plan():
    assert ALGORITHMS["kto"].family is k.KTO and check_algorithm("kto", FinetuneConfig()) == "uniform"


def test_a_kto_step_moves_the_parameters(tiny_tokenizer):
    from alol.models.logprobs import collate, encode
    from conftest import build_tiny_llama

    model = build_tiny_llama(tokenizer=tiny_tokenizer)
    prompts, replies = ["hello there", "how are you"], ["hi friend", "fine thanks"]
    own = encode(tiny_tokenizer, prompts, replies, 16, 8)
    other = encode(tiny_tokenizer, prompts, replies[::-1], 16, 8)
    batch = collate([own[0], other[0], own[1], other[1]], tiny_tokenizer.pad_token_id,
                    {"ref_logp": [-20.0, -20.0], "ref_mismatched_logp": [-25.0, -25.0], "desirable": [1.0, 0.0]})
    before = [p.detach().clone() for p in model.parameters()]
    per_example, stats = k.loss_fn(FinetuneConfig())(model, batch)
    assert per_example.shape == (2,) and stats["rewards/desirable_fraction"] == 0.5 and stats["kl"] >= 0
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    per_example.mean().backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
