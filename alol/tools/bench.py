"""Training throughput against the authors' design, TRL and this machine's matmul peak.

    pip install -e . && python -m alol.bench                   # after `dvc repro` (its rows)

Every case trains the same rows of the default task (same order, batch, micro-batch, lr) from
the same model, in its own child process so that its peak memory is its own (os.wait4):

  a  alol nll
  b  alol a_lol, reference log-probs precomputed (the Parquet columns)
  c  alol a_lol recomputing the frozen reference on every batch (a second model, as the authors do)
  d  TRL SFTTrainer (prompt-completion, completion-only loss)
  e  alol dpo, reference log-probs precomputed
  f  TRL DPOTrainer, reference recomputed; f_pre: with precompute_ref_log_probs (precompute untimed)
  a_compile  case a with the decoder under torch.compile (on request: --cases a,a_compile)

Tokens are non-padding tokens (prompt + completion) per second, the first `warmup` steps
excluded. MFU = the matmul FLOPs each case really does per second (`step_flops`) / measured fp32
matmul FLOP/s. Not 6 N tokens/s: alol applies the output head only where completion tokens are
predicted, TRL at every position, and case c and TRL's DPO add a reference forward.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = {"a": "alol nll", "b": "alol a_lol (precomputed reference)",
         "c": "a_lol recomputing the reference (authors' design)", "d": "TRL SFTTrainer",
         "e": "alol dpo (precomputed reference)", "f": "TRL DPOTrainer",
         "f_pre": "TRL DPOTrainer (precompute_ref_log_probs)",
         "a_compile": "alol nll, decoder under torch.compile (dynamic shapes)"}
DEFAULT_CASES = tuple(c for c in CASES if c != "a_compile")  # on request only: it spends over a minute compiling
ALOL_CASES = ("a", "a_compile", "b", "c", "e")


@dataclasses.dataclass
class BenchConfig:
    """What every case trains."""

    model: str = "data/assets/policy"
    """The model every case starts from (full fine-tuning)."""
    rows: str = "data/advantages/train.parquet"
    """Offline rows (prompt, completion, reward, advantage), in file order."""
    pairs: str = "data/pairs.parquet"
    """Preference pairs (prompt, chosen, rejected) for dpo."""
    steps: int = 5
    """Timed optimizer steps per case."""
    warmup: int = 2
    """Untimed optimizer steps first: here the second step still runs at ~70% of the later steps' tokens/s."""
    batch_size: int = 8
    """Rows per optimizer step (the default finetune batch)."""
    micro_batch_size: int = 4
    """Rows per forward/backward."""
    max_prompt_tokens: int = 256
    max_completion_tokens: int = 48
    learning_rate: float = 1.0e-5


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul FLOP/s of this machine (the roofline's peak)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = a.to(device), b.to(device)
    for _ in range(2):
        a @ b
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    tic = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    return 2 * n ** 3 * repeats / (time.perf_counter() - tic)


def step_flops(case: str, body: int, head: int, prompt_tokens: int, completion_tokens: int) -> float:
    """Matmul FLOPs of one training step of `case` (2 per multiply-add; backward = 2 x forward).

    body: parameters used as matmul weights at every token (all but the input embedding table and
    the output head; 6N's N minus those); head: the output head's d x V. The tokens are the step's
    non-padding prompt (P) and completion (C, EOS included) tokens; a pair row counts its prompt
    twice (chosen and rejected are two sequences). Left out, as 6N does: the attention-score term.
      alol (a, a_compile, b, e): 6 body (P + C) + 6 head C: the head only at the C positions that
          predict a completion token (the reference columns of b and e are precomputed)
      c: that + a reference forward per batch, 2 body (P + C) + 2 head C
      TRL (d, f_pre): 6 (body + head)(P + C): logits at every position, as 6N counts
      f: that + the reference forward at every position, 2 (body + head)(P + C)
    """
    tokens = prompt_tokens + completion_tokens
    if case in ("d", "f", "f_pre"):
        return (6 + 2 * (case == "f")) * (body + head) * tokens
    policy = 6 * body * tokens + 6 * head * completion_tokens
    return policy + (2 * body * tokens + 2 * head * completion_tokens if case == "c" else 0)


# ---- the child: one case -------------------------------------------------------------------

def load_rows(cfg: BenchConfig, preference: bool):
    import polars as pl

    n = (cfg.steps + cfg.warmup) * cfg.batch_size
    frame = pl.read_parquet(cfg.pairs if preference else cfg.rows)
    if frame.height < n:
        raise SystemExit(f"{cfg.pairs if preference else cfg.rows} has {frame.height} rows; the benchmark needs {n} "
                         "(steps + warmup) x batch_size. Lower --steps or run dvc repro with more rows.")
    return frame.head(n)


def run_alol(case: str, cfg: BenchConfig) -> list[tuple[float, int, int]]:
    import polars as pl
    import torch

    from alol.algorithms import ALGORITHMS, offline
    from alol.algorithms import preference as pairs_family  # `preference` below: this case trains on pairs
    from alol.algorithms.finetune import FinetuneConfig
    from alol.models.load import ModelConfig, load_policy, load_tokenizer
    from alol.models.logprobs import completion_logps, encode, forward_rows
    from alol.training.loop import TrainConfig, train

    preference = case == "e"
    frame = load_rows(cfg, preference)
    tok = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    frozen = load_policy(cfg.model, ModelConfig(mode="full"), trainable=False)
    finetune = FinetuneConfig()
    if preference:
        rows, extras = pairs_family.encode_rows(frame, tok, ALGORITHMS["dpo"], cfg.max_prompt_tokens,
                                               cfg.max_completion_tokens)
        chosen, rejected = zip(*rows)
        for name, seqs in (("ref_chosen_logp", chosen), ("ref_rejected_logp", rejected)):  # upstream, untimed
            logps, _ = forward_rows(frozen, list(seqs), tok.pad_token_id, want_states=False)
            extras[name] = [float(np.sum(x)) for x in logps]
        loss_fn = pairs_family.loss_fn(ALGORITHMS["dpo"], finetune)
    else:
        algorithm = "nll" if case in ("a", "a_compile") else "a_lol"
        if case == "b":  # the advantages stage's column, computed here with the same starting model (untimed)
            examples = encode(tok, frame["prompt"].to_list(), frame["completion"].to_list(), cfg.max_prompt_tokens,
                              cfg.max_completion_tokens)
            logps, _ = forward_rows(frozen, examples, tok.pad_token_id, want_states=False)
            frame = frame.with_columns(pl.Series("ref_token_logps", logps))  # a list would broadcast
        elif "ref_token_logps" not in frame.columns:
            frame = frame.with_columns(pl.Series("ref_token_logps", [[0.0]] * frame.height))
        rows, extras = offline.encode_rows(frame, tok, ALGORITHMS["nll" if case == "c" else algorithm],
                                          cfg.max_prompt_tokens, cfg.max_completion_tokens, cfg.rows)
        extras["advantage"] = frame["advantage"].to_list()
        loss_fn = offline.loss_fn(ALGORITHMS[algorithm], finetune)
        if case == "c":  # a second model in memory, run on every micro-batch
            inner = loss_fn

            def loss_fn(model, batch):
                with torch.no_grad():
                    ref = completion_logps(frozen, batch)
                return inner(model, {**batch, "ref_token_logps": ref})
    if case != "c":
        del frozen
    model = load_policy(cfg.model, ModelConfig(mode="full"))
    if case == "a_compile":  # compiled lazily: the compile time lands in the first (warm-up) steps
        model.get_decoder().compile(dynamic=True)
    plan = np.arange(len(rows)).reshape(-1, cfg.batch_size)
    log = []
    train(model, rows, extras, plan, loss_fn,
          TrainConfig(learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size,
                      weight_decay=0.0), tok.pad_token_id, log=lambda step, m: log.append(m))
    counts = [(sum(len(e.prompt_ids) for row in rows[i:i + cfg.batch_size] for e in row),
               sum(len(e.completion_ids) for row in rows[i:i + cfg.batch_size] for e in row))
              for i in range(0, len(rows), cfg.batch_size)]
    return [(m["step_seconds"], p, c) for m, (p, c) in zip(log, counts)]  # (seconds, prompt, completion tokens)


class StepTimer:
    """A transformers TrainerCallback recording each optimizer step's wall time."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            def __init__(self):
                self.seconds, self._tic = [], None

            def on_step_begin(self, args, state, control, **kwargs):
                self._tic = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self.seconds.append(time.perf_counter() - self._tic)

        return _Timer()


def sequential(trainer_cls):
    """The TRL trainer with rows in file order (what the alol cases train), not shuffled."""
    import torch

    class Sequential(trainer_cls):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    return Sequential


def run_trl(case: str, cfg: BenchConfig) -> list[tuple[float, int, int]]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from alol.models.load import load_tokenizer

    preference = case != "d"
    frame = load_rows(cfg, preference)
    tok = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    common = dict(output_dir=tempfile.mkdtemp(prefix="alol-bench-"), per_device_train_batch_size=cfg.micro_batch_size,
                  gradient_accumulation_steps=cfg.batch_size // cfg.micro_batch_size,
                  max_steps=cfg.steps + cfg.warmup, learning_rate=cfg.learning_rate, weight_decay=0.0,
                  lr_scheduler_type="linear", max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to=[],
                  use_cpu=not torch.cuda.is_available(), seed=0, dataloader_num_workers=0,
                  # TRL's own defaults are bf16 autocast and gradient checkpointing: alol's cases run
                  # fp32 without checkpointing (bf16 is ~27x slower on this CPU), so the same here.
                  bf16=False, fp16=False, gradient_checkpointing=False,
                  max_length=cfg.max_prompt_tokens + cfg.max_completion_tokens)
    timer = StepTimer()
    count = lambda texts: [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]  # noqa: E731
    prompt_tokens = count(frame["prompt"].to_list())
    if not preference:
        from trl import SFTConfig, SFTTrainer

        data = Dataset.from_dict({"prompt": frame["prompt"].to_list(), "completion": frame["completion"].to_list()})
        trainer = sequential(SFTTrainer)(model=model, args=SFTConfig(**common, completion_only_loss=True),
                                         train_dataset=data, processing_class=tok, callbacks=[timer])
        row_tokens = [(p, c + 1) for p, c in zip(prompt_tokens, count(frame["completion"].to_list()))]
    else:
        from trl import DPOConfig, DPOTrainer

        data = Dataset.from_dict({k: frame[k].to_list() for k in ("prompt", "chosen", "rejected")})
        trainer = sequential(DPOTrainer)(model=model, args=DPOConfig(**common, beta=0.1,
                                                                     precompute_ref_log_probs=case == "f_pre"),
                                         train_dataset=data, processing_class=tok, callbacks=[timer])
        row_tokens = [(2 * p, c + r + 2) for p, c, r in
                      zip(prompt_tokens, count(frame["chosen"].to_list()), count(frame["rejected"].to_list()))]
    trainer.train()
    per_step = np.add.reduceat(np.array(row_tokens), np.arange(0, len(row_tokens), cfg.batch_size))
    return [(s, int(p), int(c)) for s, (p, c) in zip(timer.seconds, per_step)]


def child(case: str, cfg: BenchConfig, out: Path) -> None:
    import torch

    torch.manual_seed(0)
    steps = run_alol(case, cfg) if case in ALOL_CASES else run_trl(case, cfg)
    result = {"steps": steps}
    if torch.cuda.is_available():
        result["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    out.write_text(json.dumps(result))


# ---- the parent: every case, the table -----------------------------------------------------

def run_case(case: str, cfg: BenchConfig, body: int, head: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "case.json"
        proc = subprocess.Popen([sys.executable, "-m", "alol.tools.bench", "--case", case, "--config",
                                 json.dumps(dataclasses.asdict(cfg)), "--child-out", str(out)])
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0 or not out.exists():
            return {"case": case, "error": f"exit {proc.returncode}"}
        result = json.loads(out.read_text())
    timed = result["steps"][cfg.warmup:]
    seconds = sum(s for s, _, _ in timed)
    tokens = sum(p + c for _, p, c in timed)
    flops = sum(step_flops(case, body, head, p, c) for _, p, c in timed)
    return {"case": case, "name": CASES[case], "step_seconds": seconds / len(timed), "tokens_per_second": tokens / seconds,
            "flops_per_second": flops / seconds,
            "peak_rss_mib": usage.ru_maxrss / 1024, **({"peak_gpu_mib": result["peak_gpu_bytes"] / 2 ** 20}
                                                        if "peak_gpu_bytes" in result else {})}


def report(cases: dict[str, dict], peak: float, params: int) -> dict:
    def ratio(x, y, key, invert=False):
        if "error" in cases.get(x, {"error": 1}) or "error" in cases.get(y, {"error": 1}):
            return None
        return cases[x][key] / cases[y][key]

    for row in cases.values():
        if "error" not in row:
            row["mfu"] = row["flops_per_second"] / peak
    best_f = max((c for c in ("f", "f_pre") if "error" not in cases.get(c, {"error": 1})),
                 key=lambda c: cases[c]["tokens_per_second"], default=None)
    targets = {
        "b/a step time (<= 1.05)": ratio("b", "a", "step_seconds"),
        "b/a peak memory (<= 1.05)": ratio("b", "a", "peak_rss_mib"),
        "c/a step time (contrast)": ratio("c", "a", "step_seconds"),
        "a/d tokens/s (>= 1.3)": ratio("a", "d", "tokens_per_second"),
        "e/best f tokens/s (>= 1.3)": ratio("e", best_f, "tokens_per_second") if best_f else None,
        "a MFU (>= 0.75)": cases.get("a", {}).get("mfu"),
    }
    return {"matmul_gflops": peak / 1e9, "parameters": params, "cases": list(cases.values()), "targets": targets}


def main() -> None:
    import typer

    def cli(case: str = typer.Option("", help="Internal: run one case in this process."),
            config: str = typer.Option("", help="Internal: the BenchConfig as JSON."),
            child_out: Path = typer.Option(None, help="Internal: where the child writes."),
            cases: str = typer.Option(",".join(DEFAULT_CASES), help=f"Cases to run, of {', '.join(CASES)}."),
            steps: int = typer.Option(BenchConfig.steps, help="Timed steps per case."),
            warmup: int = typer.Option(BenchConfig.warmup, help="Untimed steps first."),
            model: str = typer.Option(BenchConfig.model, help="Model every case starts from."),
            out: Path = typer.Option(Path("results/bench/bench.json"), help="Where the JSON goes.")):
        if case:
            return child(case, BenchConfig(**json.loads(config)), child_out)
        import torch
        from rich.console import Console
        from rich.table import Table

        from alol.core.io import write_json

        unknown = [c for c in cases.split(",") if c not in CASES]
        if unknown:
            raise typer.BadParameter(f"unknown case(s) {', '.join(unknown)}; valid: {', '.join(CASES)}",
                                     param_hint="--cases")
        cfg = BenchConfig(model=model, steps=steps, warmup=warmup)
        peak = matmul_flops()
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
        params = sum(p.numel() for p in meta.parameters())  # a tied head is counted once
        embeddings = (meta.get_input_embeddings().weight, meta.get_output_embeddings().weight)  # lookup, head
        head = embeddings[1].numel()
        body = sum(p.numel() for p in meta.parameters() if all(p is not e for e in embeddings))
        results = {}
        for name in cases.split(","):
            tic = time.perf_counter()
            results[name] = run_case(name, cfg, body, head)
            print(f"{name}: {results[name]} ({time.perf_counter() - tic:.0f} s)", flush=True)
        summary = report(results, peak, params)
        summary.update({"machine": f"{os.cpu_count()} CPUs" + (f", {torch.cuda.get_device_name()}"
                                                               if torch.cuda.is_available() else ""),
                        "torch": torch.__version__, "config": dataclasses.asdict(cfg),
                        "date": time.strftime("%Y-%m-%d")})
        write_json(summary, out)
        table = Table(title=f"alol.tools.bench: {summary['machine']}, matmul peak {summary['matmul_gflops']:.0f} GFLOP/s")
        for column in ("case", "what", "step s", "tokens/s", "peak RSS MiB", "MFU"):
            table.add_column(column)
        for row in summary["cases"]:
            if "error" in row:
                table.add_row(row["case"], CASES[row["case"]], row["error"], "", "", "")
            else:
                table.add_row(row["case"], row["name"], f"{row['step_seconds']:.2f}", f"{row['tokens_per_second']:.0f}",
                              f"{row['peak_rss_mib']:.0f}", f"{row['mfu']:.2f}")
        Console().print(table)
        for target, value in summary["targets"].items():
            print(f"{target}: {'n/a' if value is None else f'{value:.3f}'}")

    typer.run(cli)


if __name__ == "__main__":
    main()
