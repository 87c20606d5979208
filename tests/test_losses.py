"""Every loss on a 2-example batch of made-up log-probs, the expected numbers worked out by hand.

Batch used throughout (third token of example 0 is padding):
    logps     = [[-1.0, -2.0, -9.0], [-0.5, -1.5, -3.0]]    mask = [[1, 1, 0], [1, 1, 1]]
    ref_logps = [[-1.5, -2.0, -9.0], [-0.5, -1.0, -3.0]]
    NLL(theta) = [1 + 2, 0.5 + 1.5 + 3] = [3.0, 5.0];  NLL(ref) = [3.5, 4.5]
    log rho    = NLL(ref) - NLL(theta) = [0.5, -0.5] -> rho = [1.6487, 0.6065]
    ppo_clip = 0.2 -> clamp(rho) = [1.2, 0.8]
    reward R = [2.0, 0.5];  advantage A = [1.5, -0.5] -> A+ = [1.5, 0.0]
The batch loss is the mean of the per-example losses.
"""

import math

import pytest
import torch

from alol.algorithms import ALGORITHMS, check_algorithm, offline, preference

LOGPS = [[-1.0, -2.0, -9.0], [-0.5, -1.5, -3.0]]
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
REF = torch.tensor([[-1.5, -2.0, -9.0], [-0.5, -1.0, -3.0]])
REWARD = torch.tensor([2.0, 0.5])
ADV = torch.tensor([1.5, -0.5])


def batch_loss(name, **settings):
    logps = torch.tensor(LOGPS, requires_grad=True)
    per_example = ALGORITHMS[name].loss(logps=logps, mask=MASK, ref_logps=REF, reward=REWARD,
                                        advantage=ADV, **settings)
    return per_example.mean(), logps


def test_nll():
    assert batch_loss("nll")[0].item() == pytest.approx((3.0 + 5.0) / 2)


def test_wbc():
    assert batch_loss("wbc")[0].item() == pytest.approx((2.0 * 3.0 + 0.5 * 5.0) / 2)  # 4.25


def test_r_gold():
    # weights max(p_t, 0.1), p_t = exp(logp_t): e^-1 = 0.36788, e^-2 = 0.13534 ; e^-0.5, e^-1.5, e^-3 -> 0.1
    ex0 = math.exp(-1) * 1.0 + math.exp(-2) * 2.0                    # 0.63856
    ex1 = math.exp(-0.5) * 0.5 + math.exp(-1.5) * 1.5 + 0.1 * 3.0    # 0.93796
    expected = (2.0 * ex0 + 0.5 * ex1) / 2                            # 0.87305
    assert expected == pytest.approx(0.87305, abs=1e-5)
    assert batch_loss("r_gold")[0].item() == pytest.approx(expected, rel=1e-6)


def test_r_lol():
    assert batch_loss("r_lol", ppo_clip=0.2)[0].item() == pytest.approx((1.2 * 2.0 * 3.0 + 0.8 * 0.5 * 5.0) / 2)  # 4.6


def test_a_lol():
    loss, logps = batch_loss("a_lol", ppo_clip=0.2)
    assert loss.item() == pytest.approx((1.2 * 1.5 * 3.0 + 0.0) / 2)  # 2.7
    # the ratio is detached: the gradient is a weighted NLL gradient, -w / B on each real token
    loss.backward()
    expected = torch.tensor([[-1.2 * 1.5 / 2, -1.2 * 1.5 / 2, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(logps.grad, expected)


def test_a_lol_unclipped_ratio_inside_range():
    # with ppo_clip 0.9 the range is [0.1, 1.9]: rho 1.6487 and 0.6065 pass unchanged
    loss = batch_loss("a_lol", ppo_clip=0.9)[0].item()
    assert loss == pytest.approx(math.exp(0.5) * 1.5 * 3.0 / 2)


def test_a_lol_ref_free():
    assert batch_loss("a_lol_ref_free")[0].item() == pytest.approx(1.5 * 3.0 / 2)  # 2.25


def test_a_lol_seq():
    # per-token w_t = exp(logp - ref): ex0 [e^0.5 -> 1.2, e^0 = 1.0], padding ignored
    ex0 = 1.5 * (1.2 * 1.0 + 1.0 * 2.0)  # 4.8
    assert batch_loss("a_lol_seq", ppo_clip=0.2)[0].item() == pytest.approx((ex0 + 0.0) / 2)  # 2.4


def test_a_lol_kl():
    # A+ * NLL + beta * (NLL_ref - NLL), beta = 0.1
    ex0 = 1.5 * 3.0 + 0.1 * (3.5 - 3.0)  # 4.55
    ex1 = 0.0 * 5.0 + 0.1 * (4.5 - 5.0)  # -0.05
    loss, logps = batch_loss("a_lol_kl", kl_beta=0.1)
    assert loss.item() == pytest.approx((ex0 + ex1) / 2)  # 2.25
    loss.backward()  # gradient (A+ - beta) * grad NLL
    torch.testing.assert_close(logps.grad[:, 0], torch.tensor([-(1.5 - 0.1) / 2, -(0.0 - 0.1) / 2]))


def test_dpo():
    chosen, rejected = torch.tensor([-3.0]), torch.tensor([-5.0])
    ref_chosen, ref_rejected = torch.tensor([-3.5]), torch.tensor([-4.5])
    # z = 0.1 * ((-3 + 5) - (-3.5 + 4.5)) = 0.1 ; -log sigmoid(z) = log(1 + e^-z)
    assert preference.dpo(chosen, rejected, ref_chosen, ref_rejected, beta=0.1).item() == pytest.approx(
        math.log(1 + math.exp(-0.1)))  # 0.64440
    assert preference.dpo(chosen, rejected, beta=0.1).item() == pytest.approx(math.log(1 + math.exp(-0.2)))  # ref-free


def test_pro_two_candidates():
    scores, rewards = torch.tensor([[-1.0, -2.0]]), torch.tensor([[1.0, -1.0]])
    # T = r0 - r1 = 2: log(e^{-2} + e^{-4}) - (-2) = log(1 + e^-2) = 0.126928; + 0.05 * 1 * NLL(y0 = 3.0)
    expected = math.log(1 + math.exp(-2)) + 0.05 * 3.0
    assert preference.pro(scores, rewards, torch.tensor([3.0])).item() == pytest.approx(expected)


def test_pro_three_candidates():
    scores, rewards = torch.tensor([[0.0, -1.0, -2.0]]), torch.tensor([[3.0, 2.0, 0.0]])
    # k = 0: T01 = 1, T02 = 3, T00 = max = 3 -> logits [0, -1, -6]: log(1 + e^-1 + e^-6) - 0 = 0.315071
    # k = 1: T12 = 2, T11 = 2 -> logits [-2, -4]: log(1 + e^-2) = 0.126928
    # SFT: 0.05 * (3 - 1)^2 * NLL 2.0 = 0.4
    expected = math.log(1 + math.exp(-1) + math.exp(-6)) + math.log(1 + math.exp(-2)) + 0.4
    assert preference.pro(scores, rewards, torch.tensor([2.0])).item() == pytest.approx(expected)  # 0.841999


def test_stats():
    stats = offline.offline_stats(torch.tensor(LOGPS), MASK, REF, ADV, ppo_clip=0.2)
    assert stats["advantage/positive_fraction"] == 0.5
    assert stats["ratio/mean"] == pytest.approx((math.exp(0.5) + math.exp(-0.5)) / 2)
    assert stats["ratio/clip_fraction"] == 1.0  # both ratios fall outside [0.8, 1.2]
    assert stats["kl"] == pytest.approx(0.0)  # +0.5 and -0.5


# --- the algorithm table: one record per algorithm, every other fact derived from it ----------

def test_algorithm_table_matches_the_spec():
    """Spec section 2's 'needs pi_ref' / 'needs V' columns, and the pairs algorithms."""
    table = ALGORITHMS
    assert {n for n, a in table.items() if any(c.startswith("ref_") for c in a.reads)} == {"r_lol", "a_lol", "a_lol_seq", "a_lol_kl", "dpo",
                                                                                    "kto"}
    assert {n for n, a in table.items() if a.needs_advantage} == {"a_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl"}
    assert {n for n, a in table.items() if a.family.name == "preference"} == {"dpo", "dpo_ref_free", "pro"}
    assert {n for n, a in table.items() if a.clipped} == {"r_lol", "a_lol", "a_lol_seq"}


@pytest.mark.parametrize("algorithm, strategy", [
    ("a_lol", "pairs"),              # the pairs plan indexes the pairs table, not the offline rows
    ("nll", "pairs"),
    ("wbc", "good_priority"),        # drawn by advantage, weighted by reward
    ("a_lol", "reward_priority"),    # drawn by reward, weighted by advantage
    ("dpo", "uniform"),              # preference algorithms train on the pairs plan only
])
def test_mismatched_sampling_strategy_is_refused(algorithm, strategy):
    from alol.core.errors import AlolError
    from alol.algorithms.finetune import FinetuneConfig

    with pytest.raises(AlolError, match=rf"finetune\.sampling_strategy '{strategy}' does not fit {algorithm}; valid"):
        check_algorithm(algorithm, FinetuneConfig(sampling_strategy=strategy))


def test_auto_and_fitting_strategies():
    from alol.algorithms.finetune import FinetuneConfig

    auto = {name: check_algorithm(name, FinetuneConfig()) for name in ALGORITHMS}
    assert auto == {"nll": "uniform", "wbc": "reward_priority", "r_gold": "reward_priority",
                    "r_lol": "reward_priority", "a_lol": "good_priority", "a_lol_ref_free": "good_priority",
                    "a_lol_seq": "good_priority", "a_lol_kl": "good_priority", "rft": "reward_filtered", "dpo": "pairs",
                    "dpo_ref_free": "pairs", "pro": "pairs", "kto": "uniform", "ppo": "online", "grpo": "online",
                    "rloo": "online"}
    assert check_algorithm("a_lol", FinetuneConfig(sampling_strategy="all_priority")) == "all_priority"
    assert check_algorithm("wbc", FinetuneConfig(sampling_strategy="uniform")) == "uniform"


def test_online_algorithms_take_no_plan():
    """ppo, grpo and rloo train on their own rollouts: a sampling strategy for a plan of rows is an error."""
    from alol.core.errors import AlolError
    from alol.algorithms.finetune import FinetuneConfig

    assert {n for n, a in ALGORITHMS.items() if a.strategy == "online"} == {"ppo", "grpo", "rloo"}
    assert ALGORITHMS["ppo"].family.name == "ppo" and ALGORITHMS["grpo"].family.name == "trl"
    with pytest.raises(AlolError, match=r"sampling_strategy 'uniform' does not fit ppo; valid: auto \(online\)"):
        check_algorithm("ppo", FinetuneConfig(sampling_strategy="uniform"))


def test_the_registry_is_the_families_records_in_order():
    """alol.algorithms.ALGORITHMS is each family module's records, in the order tables list them, and
    each record's family owns the train function the finetune stage calls."""
    from alol.algorithms import ppo_trainer, trl

    from alol.algorithms import kto

    assert list(ALGORITHMS) == ["nll", "wbc", "r_gold", "r_lol", "a_lol", "a_lol_ref_free", "a_lol_seq", "a_lol_kl",
                                "rft", "dpo", "dpo_ref_free", "pro", "kto", "ppo", "grpo", "rloo"]
    modules = {"offline": offline, "preference": preference, "kto": kto, "ppo": ppo_trainer, "trl": trl}
    for name, algorithm in ALGORITHMS.items():
        assert algorithm.family.train is modules[algorithm.family.name].train, name
        assert algorithm in modules[algorithm.family.name].ALGORITHMS
