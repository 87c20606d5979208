"""`finetune:` the settings of every family, in the one section users write (`finetune.ppo`,
`finetune.grpo`, ... as in params.yaml); each family reads its own part: offline and preference the
top-level settings, ppo `ppo` (alol.algorithms.ppo_trainer), grpo and rloo their own (alol.algorithms.trl)."""

from __future__ import annotations

import dataclasses

from alol.algorithms.ppo_trainer import PPOConfig
from alol.algorithms.trl import TRLOnlineConfig
from alol.models.generate import GenerationConfig
from alol.training.loop import TrainConfig


@dataclasses.dataclass
class FinetuneConfig:
    """`finetune:` the algorithm's settings (the algorithm itself is the top-level `algorithm`)."""

    ppo_clip: float = 0.2
    """eps: importance ratios are clamped to [1 - eps, 1 + eps] (reference: 0.2 small tasks, 0.9 HH)."""
    kl_beta: float = 0.1
    """beta of a_lol_kl's KL term (must be > 0 for a_lol_kl)."""
    sampling_strategy: str = "auto"
    """auto (by algorithm: A-LoL -> good_priority, wbc/r_gold/r_lol -> reward_priority, else uniform),
    uniform, good_priority, all_priority or reward_priority."""
    dpo_beta: float = 0.1
    """DPO's beta."""
    pro_sft_weight: float = 0.05
    """PRO's weight of the NLL term on the best candidate."""
    kto_beta: float = 0.1
    """KTO's beta (the paper's and TRL's default)."""
    kto_desirable_weight: float = 1.0
    """KTO's lambda_D, the weight of a desirable reply's loss."""
    kto_undesirable_weight: float = 1.0
    """KTO's lambda_U, the weight of an undesirable reply's loss."""
    kto_quantile: float = 0.5
    """Without a `label` column, a reply is desirable for KTO when its reward is at or above this quantile of
    the train rewards."""
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(learning_rate=1.0e-4, batch_size=8, micro_batch_size=4))
    """Optimiser, schedule and batching (train.eval_every turns periodic validation on)."""
    validation_rows: int = 64
    """Validation prompts scored at each evaluation (with train.eval_every > 0)."""
    validation_metric: str = "reward"
    """The mean validation column that picks the best weights: `reward` (the weighted sum) or one
    component's `reward_<name>` (the paper: FaithCritic's for wow and faithdial_wow, the critic's for comet)."""
    validation_generation: GenerationConfig = dataclasses.field(
        default_factory=lambda: GenerationConfig(max_new_tokens=32))
    """Decoding of the validation replies."""
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    """algorithm: ppo (online, alol's loop; its own optimiser settings in ppo.train)."""
    grpo: TRLOnlineConfig = dataclasses.field(default_factory=TRLOnlineConfig)
    """algorithm: grpo (online, TRL's GRPOTrainer)."""
    rloo: TRLOnlineConfig = dataclasses.field(default_factory=lambda: TRLOnlineConfig(beta=0.05))
    """algorithm: rloo (online, TRL's RLOOTrainer; beta: TRL's default 0.05)."""
