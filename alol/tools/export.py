"""`alol export OUT`: the trained policy as a standalone checkpoint that plain transformers loads from any folder.

models/policy is what the pipeline needs: a LoRA adapter whose base is recorded as the download stage's copy
(data/assets/policy, relative to the pipeline's folder, so the folder's md5 is the same on every machine). OUT
is what a user needs: the adapter merged into its base (LoRA: W + BA; a QLoRA adapter lands on the base's
unquantised weights), or a full fine-tune, loaded and saved again (one path for both: safetensors and the
chosen dtype either way), with the tokenizer and a model card naming the algorithm, the base, the data, the
reward and, when evaluate has run, its headline metrics with their 95% intervals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from alol.core.errors import AlolError

DTYPES = ("float32", "bfloat16", "float16")


def export_policy(out: Path, model: Path = Path("models/policy"), params: Path = Path("params.yaml"),
                  metrics: Path = Path("results/evaluate/metrics.json"), dtype: str = "float32", force: bool = False,
                  echo: Callable[[str], None] = print) -> None:
    """Write `model` (trained with `params`) to `out` as a merged, standalone checkpoint with its card."""
    import torch
    from transformers import AutoModelForCausalLM

    from alol.core.io import atomic_path
    from alol.core.params import load_params, section
    from alol.models.card import base_description, export_card
    from alol.models.load import ModelConfig, load_tokenizer, policy_paths

    p = load_params(params)
    if dtype not in DTYPES:
        raise AlolError(f"--dtype {dtype}: not one of {', '.join(DTYPES)}.")
    if not Path(model).is_dir():
        raise AlolError(f"{model}: no such policy folder; run the pipeline first (dvc repro), or pass --model.")
    if Path(out).exists() and not force:
        raise AlolError(f"{out}: exists; pass --force to replace it, or name a new folder.")
    base, adapter = policy_paths(model)
    cfg = section(p, "model", ModelConfig)
    try:
        weights = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        raise AlolError(f"{model}: could not load its base {base} ({err}); run `alol export` in the pipeline's "
                        "folder (a relative base is the download stage's data/assets/policy).") from None
    if adapter is not None:
        from peft import PeftModel

        weights = PeftModel.from_pretrained(weights, adapter).merge_and_unload()
    manifest_path = Path(params).parent / "data" / "assets" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    details = Path(metrics).parent / "details.json"
    rows = json.loads(details.read_text()).get("rows") if details.exists() else None
    lora = json.loads((adapter / "adapter_config.json").read_text()) if adapter is not None else None
    card = export_card(p, base_description((p.get("download") or {}).get("policy"), manifest), lora,
                       json.loads(Path(metrics).read_text()) if Path(metrics).exists() else None, rows)
    with atomic_path(out) as tmp:
        weights.to(getattr(torch, dtype)).save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(model).save_pretrained(tmp)
        (tmp / "README.md").write_text(card)
    how = f"the adapter merged into {base}" if adapter is not None else "a full model"
    echo(f"exported the {p['algorithm']} policy ({how}) to {out}: "
         f"AutoModelForCausalLM.from_pretrained({str(out)!r}) loads it from any folder.")
