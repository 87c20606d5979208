"""Where every model runs, in which dtype, and which process does what: the one place that decides.

Every stage runs as one process (`python stages/x.py`) or as N (`accelerate launch stages/x.py`,
`torchrun`). Accelerate's `PartialState` knows this process's device: `cuda:<local rank>` on a
GPU machine, else the CPU. Each model a stage loads goes through `place` (or, for weights that
must be placed while loading, like 4-bit QLoRA, through `load_kwargs`), so a reader finds the
whole device policy here:

| role          | device           | dtype on CUDA                        | dtype on CPU |
|---------------|------------------|--------------------------------------|--------------|
| policy        | this process's   | `model.dtype` (bf16 recommended)     | `model.dtype` (float32) |
| value head    | this process's   | float32 (tiny; fit in fp32)          | float32      |
| reward model  | this process's   | bf16 (large transformer classifiers) | float32      |
| small reward  | this process's   | float32 (BiLSTM, MiniLM: tiny)       | float32      |

Reward models in bf16: a reward is one logit (or a softmax over a few) read once per reply, so
bf16's 3 significant digits move it by ~1e-2 at most and never reorder clearly different replies;
the big ones (OASST 1.4B/6.9B) would not fit a 24 GB GPU in fp32. The tiny built-ins stay fp32 so
that their scores equal the CPU's. A component's `dtype:` overrides this.

Two environment variables turn a run into a check, asserted inside every stage:
ALOL_EXPECT_DEVICE=cuda (every model must land on a CUDA device) and ALOL_EXPECT_PROCESSES=N
(the stage must run as N processes).
"""

from __future__ import annotations

import os

import torch

from alol.core.errors import AlolError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The distributed types training supports (data parallel: DDP); the others are refused by `check_data_parallel`.
DATA_PARALLEL = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_MUSA", "MULTI_HPU")
SHARDED = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_FSDP": "FSDP",
           "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def state():
    """Accelerate's view of this process: device, process index, number of processes.

    Launched as several processes on a machine without CUDA (or with ACCELERATE_USE_CPU=true), the
    processes join over gloo on the CPU; PartialState alone would run each as if it were alone."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def device() -> torch.device:
    return state().device


def is_main_process() -> bool:
    return state().is_main_process


def reward_dtype(requested: str = "auto", small: bool = False) -> torch.dtype:
    """The dtype of a reward model: `requested`, or by the table above for 'auto'."""
    if requested != "auto":
        return DTYPES[requested]
    if small or device().type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_kwargs(dtype: torch.dtype) -> dict:
    """from_pretrained arguments that load straight onto this process's device.

    4-bit weights cannot be moved after loading, so on a GPU each process loads its own copy onto
    its own device (`device_map={"": cuda:<local rank>}`): one copy per process, as DDP needs."""
    kwargs = {"dtype": dtype}
    if device().type == "cuda":
        kwargs["device_map"] = {"": device()}
    return kwargs


def place(module: torch.nn.Module, role: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Move `module` to this process's device (and `dtype`), then check it landed where expected."""
    quantized = getattr(module, "is_loaded_in_4bit", False) or getattr(module, "is_loaded_in_8bit", False)
    if not quantized:  # 4-bit weights are placed at load time (load_kwargs) and cannot be cast
        module = module.to(device=device(), dtype=dtype) if dtype is not None else module.to(device())
    check_device(module, role)
    return module


def check_device(module: torch.nn.Module, role: str) -> None:
    """With ALOL_EXPECT_DEVICE set (e.g. `cuda`), every parameter of `module` must be on that device type."""
    expected = os.environ.get("ALOL_EXPECT_DEVICE")
    if expected:
        found = {p.device.type for p in module.parameters()}
        if found != {expected}:
            raise AlolError(f"the {role} is on {sorted(found)} but ALOL_EXPECT_DEVICE={expected}.")
    if os.environ.get("ALOL_REPORT_DEVICES"):
        first = next(module.parameters())
        print(f"[alol] {role}: {first.device} {first.dtype}", flush=True)


def check_processes() -> None:
    """With ALOL_EXPECT_PROCESSES=N, the stage must run as N processes (a launcher that silently
    starts one, like `accelerate launch --cpu`, fails here instead of passing a test by itself)."""
    expected = os.environ.get("ALOL_EXPECT_PROCESSES")
    if expected and int(expected) != state().num_processes:
        raise AlolError(f"running as {state().num_processes} process(es) but ALOL_EXPECT_PROCESSES={expected}; "
                        "launch with `torchrun --nproc_per_node N` or `accelerate launch --num_processes N` "
                        "(with ACCELERATE_USE_CPU=true on a CPU machine).")


def check_data_parallel(distributed_type: str | None = None) -> None:
    """Training is data parallel (DDP, any number of GPUs and nodes). Sharded training (DeepSpeed
    ZeRO, FSDP) is refused before anything loads: periodic validation and the best-weights copy read
    the whole model, and no test covers it (`accelerate launch` sets these flags from its config)."""
    from accelerate.utils import parse_flag_from_env

    sharded = [name for flag, name in SHARDED.items() if parse_flag_from_env(flag)]
    if sharded or (distributed_type is not None and distributed_type not in DATA_PARALLEL):
        found = sharded[0] if sharded else distributed_type
        raise AlolError(f"accelerate config: {found} is not supported; alol trains data-parallel (DDP: one or many "
                        "GPUs, one or many nodes). Run `accelerate config` again and choose multi-GPU without "
                        "DeepSpeed or FSDP (LoRA/QLoRA keeps a 7B policy within one GPU's memory).")
