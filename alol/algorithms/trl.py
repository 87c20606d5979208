"""grpo and rloo through TRL's GRPOTrainer / RLOOTrainer: our policy (LoRA/QLoRA as `model:` says), our
train prompts, our reward; TRL does the rest (sampling groups, group-relative advantages, the loss).

    python stages/finetune.py ... (algorithm: grpo or rloo)    # the finetune stage calls `train` (the trl family)

What alol adds is only the glue: the policy loaded like every other algorithm's (the reference adapter
keeps training; with beta > 0 TRL copies it into a frozen "ref" adapter, so the KL is against pi_ref,
not the bare base), the task's RewardFunction wrapped as a TRL reward function, fp32 without gradient
checkpointing on the CPU (TRL's bf16 default is ~27x slower there), TRL's logs into our DVCLive
folder, and the trained adapter saved with save_policy so evaluate reads it like any policy.
Prompts are the `prompt` column as the policy reads it (chat template applied); TRL does not
left-truncate them (base.max_prompt_tokens is not applied: chit-chat's clean stage keeps prompts
within it, HH's does not).
"""

from __future__ import annotations

import dataclasses
import tempfile

import torch

from alol.algorithms.record import Algorithm, Family
from alol.algorithms.run import rollout_start
from alol.core.errors import AlolError
from alol.models.generate import GenerationConfig, cut_at_stop
from alol.training.loop import TrainConfig, grad_accumulation
from alol.training.summary import first, last, summarize


@dataclasses.dataclass
class TRLOnlineConfig:
    """`finetune.grpo:` / `finetune.rloo:` the settings alol passes to TRL's GRPOConfig / RLOOConfig
    (everything else keeps TRL's defaults). Defaults sized for the default task on 2 CPU cores."""

    steps: int = 8
    """Optimizer steps (TRL's max_steps)."""
    num_generations: int = 4
    """Sampled replies per prompt (the group whose rewards give each reply's baseline)."""
    beta: float = 0.0
    """KL coefficient against pi_ref (GRPO: TRL's default 0.0, no reference pass; RLOO: TRL's 0.05)."""
    epsilon: float = 0.2
    """Clip range of the importance ratio."""
    num_iterations: int = 1
    """Optimisation passes per batch of generations (TRL's mu)."""
    generation: GenerationConfig = dataclasses.field(
        default_factory=lambda: GenerationConfig(max_new_tokens=32, do_sample=True))
    """Sampling: max_new_tokens, temperature, top_p, repetition_penalty (stop_strings: applied to the text
    the reward sees; TRL trains on the tokens up to EOS or max_new_tokens)."""
    train: TrainConfig = dataclasses.field(
        default_factory=lambda: TrainConfig(learning_rate=1.0e-4, batch_size=16, micro_batch_size=8))
    """Optimiser and batching: batch_size = replies per optimizer step over all processes (prompts x
    num_generations), micro_batch_size = replies per forward (TRL's per_device_train_batch_size)."""



def check_trl(algorithm: str, cfg: TRLOnlineConfig, processes: int = 1) -> int:
    """Validate the settings; return the gradient accumulation steps."""
    where = f"finetune.{algorithm}"
    if cfg.train.batch_size % cfg.num_generations:
        raise AlolError(f"{where}.train.batch_size {cfg.train.batch_size} must be a multiple of "
                        f"{where}.num_generations {cfg.num_generations} (whole groups of replies per step).")
    if cfg.num_generations < 2:
        raise AlolError(f"{where}.num_generations must be >= 2: the group's other replies are the baseline.")
    if cfg.train.checkpoint_every or cfg.train.eval_every:
        raise AlolError(f"{where}.train: checkpoint_every and eval_every are not supported through TRL; set them to 0.")
    if not cfg.generation.do_sample or cfg.generation.num_beams != 1:
        raise AlolError(f"{where}.generation: replies are sampled; set do_sample: true and num_beams: 1.")
    return grad_accumulation(cfg.train, processes)


def reward_function(reward, frame):
    """Our RewardFunction as a TRL reward function: TRL passes the dataset's columns (here prompt_id)
    with the prompts and completions; each process scores its own completions."""
    from alol.rewards.annotate import reward_inputs

    by_id = {pid: i for i, pid in enumerate(frame["prompt_id"].to_list())}

    def task_reward(prompts, completions, prompt_id, completion_ids=None, **_):
        rows = frame[[by_id[p] for p in prompt_id]]
        texts = [cut_at_stop(c, task_reward.stops) for c in completions]
        scores = reward(reward_inputs(rows, "train", completions=texts), source="TRL rollouts", row_ids=prompt_id,
                        description=None, local=True)
        task_reward.generated += sum(len(ids) for ids in completion_ids or [])
        return scores["reward"].tolist()

    task_reward.stops, task_reward.generated = [], 0  # stop strings; tokens this process generated
    return task_reward


def trl_args(algorithm: str, cfg: TRLOnlineConfig, model_cfg, seed: int, output_dir: str, processes: int):
    from trl import GRPOConfig, RLOOConfig

    accumulation = check_trl(algorithm, cfg, processes)
    kwargs = dict(
        output_dir=output_dir, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
        seed=seed, max_steps=cfg.steps, per_device_train_batch_size=cfg.train.micro_batch_size,
        gradient_accumulation_steps=accumulation, learning_rate=cfg.train.learning_rate,
        lr_scheduler_type=cfg.train.lr_schedule, warmup_steps=cfg.train.warmup_steps,
        weight_decay=cfg.train.weight_decay, adam_epsilon=cfg.train.adam_eps,
        max_grad_norm=cfg.train.max_grad_norm or 1.0e9,
        bf16=model_cfg.dtype == "bfloat16", fp16=model_cfg.dtype == "float16",
        gradient_checkpointing=model_cfg.gradient_checkpointing,
        num_generations=cfg.num_generations, max_completion_length=cfg.generation.max_new_tokens,
        temperature=cfg.generation.temperature, top_p=cfg.generation.top_p,
        repetition_penalty=cfg.generation.repetition_penalty,
        beta=cfg.beta, epsilon=cfg.epsilon, num_iterations=cfg.num_iterations, remove_unused_columns=False)
    return (GRPOConfig if algorithm == "grpo" else RLOOConfig)(**kwargs)


def train_trl(algorithm: str, policy, tokenizer, frame, reward, cfg: TRLOnlineConfig, model_cfg, seed: int,
              log=None):
    """Train `policy` with TRL's trainer for `algorithm` on the prompts of `frame`; `log(step, metrics)`
    receives TRL's logs on the main process. Returns the trained policy, ready to save."""
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer, RLOOTrainer

    from alol.core.device import state

    class Forward(TrainerCallback):
        def on_log(self, args, trainer_state, control, logs=None, **_):
            if log is not None and trainer_state.is_world_process_zero and logs:
                log(trainer_state.global_step, {k: float(v) for k, v in logs.items()
                                                if isinstance(v, (int, float)) and not isinstance(v, bool)})

    tokenizer.padding_side = "left"
    data = Dataset.from_dict({"prompt": frame["prompt"].to_list(), "prompt_id": frame["prompt_id"].to_list()})
    task_reward = reward_function(reward, frame)
    task_reward.stops.extend(cfg.generation.stop_strings)
    trainer_cls = GRPOTrainer if algorithm == "grpo" else RLOOTrainer
    with tempfile.TemporaryDirectory(prefix=f"alol-{algorithm}-") as output_dir:
        args = trl_args(algorithm, cfg, model_cfg, seed, output_dir, state().num_processes)
        trainer = trainer_cls(model=policy, reward_funcs=task_reward, args=args, train_dataset=data,
                              processing_class=tokenizer, callbacks=[Forward()])
        trainer.remove_callback(PrinterCallback)  # LiveLog prints the step's headline numbers
        trainer.train()
        trained = trainer.accelerator.unwrap_model(trainer.model)
        generated = int(trainer.accelerator.reduce(torch.tensor(task_reward.generated), "sum"))
    if hasattr(trained, "peft_config") and "ref" in trained.peft_config:  # TRL's frozen copy of pi_ref
        trained.delete_adapter("ref")
    return trained, generated


def summarize_trl(history: list[dict], generated_tokens: int) -> dict:
    """Run-level metrics of a TRL run: reward first and last, the cost (generated tokens, seconds)."""
    end = next((h for h in reversed(history) if "train_runtime" in h), {})
    seconds = end.get("train_runtime") or sum(h.get("step_time", 0.0) for h in history if "reward" in h)
    return summarize(history, "reward", first_reward=first("reward"), final_reward=last("reward"),
                     first_loss=first("loss"), final_loss=last("loss"), generated_tokens=lambda _: generated_tokens,
                     generated_tokens_per_second=lambda _: generated_tokens / seconds, train_seconds=lambda _: seconds)


def train(run):
    """The trl family: `run.algorithm` (grpo or rloo) through TRL, with its settings finetune.<name>."""
    live = run.live()
    frame, reward, model = rollout_start(run)
    name = run.algorithm.name
    model, generated = train_trl(name, model, run.tokenizer, frame, reward, getattr(run.cfg, name), run.model_cfg,
                                 run.base.seed, live)
    if live is not None:
        live.close()
    return model, summarize_trl(live.history if live else [], generated)


TRL = Family("trl", train)
ALGORITHMS = (Algorithm("grpo", TRL, None, (), "online"), Algorithm("rloo", TRL, None, (), "online"))
"""Each with its own settings, finetune.grpo / finetune.rloo (TRLOnlineConfig), and TRL's trainer of that name."""
