"""evaluate: a policy's replies to the test prompts, scored with the task reward, beside the gold
replies and (with --baseline) paired with the reference policy's replies to the same prompts.

    python stages/evaluate.py models/reference data/annotated data/assets results/evaluate_reference
    python stages/evaluate.py models/policy data/annotated data/assets results/evaluate \
        --reference models/reference --baseline results/evaluate_reference/generations.parquet
"""

from pathlib import Path

import typer

from alol.core.stage import stage
from alol.core.device import is_main_process
from alol.evaluation.evaluate import EvaluateConfig, evaluate_policy, headline
from alol.core.io import read_parquet, write_all
from alol.core.params import BaseConfig, load_params, section
from alol.evaluation.plots import reward_distribution_plots


@stage
def main(policy: Path = typer.Argument(..., help="The policy folder (model or adapter) to evaluate."),
         annotated: Path = typer.Argument(..., help="Folder with the annotated test.parquet (and reward state)."),
         assets: Path = typer.Argument(..., help="Output folder of the download stage (reward models)."),
         results: Path = typer.Argument(..., help="Folder for metrics.json (headline), details.json, "
                                                  "generations.parquet and plots."),
         reference: Path = typer.Option(None, help="The reference policy: adds KL(policy || reference) on "
                                                   "sampled replies."),
         baseline: Path = typer.Option(None, help="Another evaluation's generations.parquet: adds the paired "
                                                  "comparison (gain with 95% CI, win rate)."),
         params: Path = typer.Option(Path("params.yaml"), help="Reads base, model, rewards, evaluate.")):
    p = load_params(params)
    base, cfg = section(p, "base", BaseConfig), section(p, "evaluate", EvaluateConfig)
    test = read_parquet(annotated / "test.parquet", ["prompt_id", "prompt", "context", "completion", "reward"])
    baseline_frame = read_parquet(baseline, ["prompt_id", "completion", "reward"]) if baseline is not None else None
    generations, metrics = evaluate_policy(p, base, cfg, policy, test, annotated, assets, reference, baseline_frame)
    if not is_main_process():
        return
    write_all({results / "generations.parquet": generations, results / "details.json": metrics,
               results / "metrics.json": headline(metrics)})
    reward_distribution_plots(generations, test, baseline_frame, results)
    shown = {k: round(v, 4) for k, v in metrics["generations"].items() if k.startswith("reward") or k == "kl"}
    print("generations:", shown)
    if "vs_baseline" in metrics:
        gain = metrics["vs_baseline"]["reward"]
        print(f"reward gain over the baseline: {gain['gain']:+.4f} (95% CI {gain['ci_low']:+.4f} .. "
              f"{gain['ci_high']:+.4f}), win rate {gain['win_rate']:.3f}")


if __name__ == "__main__":
    typer.run(main)
