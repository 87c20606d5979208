"""The dataset task's clean at scale: a 1,000,000-row prompt/completion JSONL and a 100,000-conversation
`messages` JSONL, each cleaned from a cold `datasets` cache in a fresh process.

    python -m alol.tools.clean_bench --out results/bench/clean.json      # after `dvc repro download`
    python -m alol.tools.clean_bench --profile 50000 --out results/bench/clean-profile.json

The data is generated (seeded) in a temporary folder: English words drawn with their real frequencies
(the words, with the punctuation attached to them, of the BYU Chit-Chat conversations in the pinned
`chitchat-dataset` wheel: a unigram model of real chat, so the policy's BPE splits them as it splits real
text), lognormal word counts per prompt / reply / turn and a uniform number of turns per conversation
(`Shapes`, recorded in the JSON with the token counts it gave). Each case then runs what the clean stage
runs (load_params, the task's tables, write_all to Parquet) in a child process with its own empty
HF_HOME; the data's JSONL is in the OS page cache (it was just written).

Peak memory is of the process tree: every 0.25 s the child and all its descendants (datasets' map workers)
are found through /proc/<pid>/stat's parent pids, and each one's VmRSS and VmHWM (its own peak resident
size, kept by the kernel) are read from /proc/<pid>/status. Reported: the peak of the VmRSS sum (what was
resident at once, at the samples), and the sum of every process's VmHWM (an upper bound of the tree's peak:
it adds peaks that need not coincide, and none is missed between samples); the 6 GiB target is judged on
the latter. Both count a page shared by several processes (the forked workers' copy-on-write pages, the
memory-mapped Arrow files) once per process. Every 5 s, in a thread of its own, the Pss sum
(/proc/<pid>/smaps_rollup: a shared page split among the processes that map it, so the real footprint) is
taken too; not more often, as reading smaps_rollup walks the page tables under each process's memory lock
(about a second per sample here, slowing the workers it measures). The child also reports its own and its
largest worker's max RSS (single processes, not a sum: its own VmHWM at the end of each phase, and
getrusage's for the workers; not getrusage's for itself, which keeps the peak of the forked copy of this
process that it was before its exec).

--profile N: cProfile of the clean (one process, num_proc 1) on the first N rows of each file instead.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import pstats
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from alol.core.errors import AlolError

GIB = 1 << 30
TARGETS = {"wall_s": 300.0, "sum_of_each_process_peak_gib": 6.0}
"""Issue 22's: each clean within 5 minutes, peak memory (summed over the processes) under 6 GiB."""


@dataclasses.dataclass
class Shapes:
    """The generated data's distributions (word counts: lognormal, rounded, clipped to [1, max])."""

    rows: int = 1_000_000
    """prompt/completion rows."""
    conversations: int = 100_000
    """messages conversations."""
    prompt_words_median: float = 15.0
    prompt_words_sigma: float = 0.8
    """The log's standard deviation: p10 ~ 5 words, p90 ~ 42."""
    reply_words_median: float = 40.0
    reply_words_sigma: float = 0.9
    """p10 ~ 13 words, p90 ~ 127."""
    max_words: int = 2_000
    turns_min: int = 2
    turns_max: int = 12
    """Turns per conversation: uniform on [min, max], alternating user / assistant from the user; the user's
    turns have the prompts' word counts, the assistant's the replies'."""
    seed: int = 22


# --- the data ---------------------------------------------------------------------------------------------

def english_words(cache_dir: str = "~/.cache/alol/wheels",
                  index_url: str | None = None) -> tuple[list[str], np.ndarray]:
    """(words, probabilities): every word of the BYU Chit-Chat conversations (letters, digits and
    apostrophes, with the punctuation that follows it), with its share of all words."""
    from alol.core.fetch import fetch_wheel
    from alol.tasks import chitchat

    wheel = fetch_wheel(chitchat.DATA, Path(cache_dir), index_url)
    with zipfile.ZipFile(wheel) as zf:
        data = json.loads(zf.read("chitchat_dataset/dataset.json"))
    counts = Counter()
    word = re.compile(r"[A-Za-z0-9']+[.,!?]?")
    for record in data.values():
        for turn in record["messages"]:
            for message in turn:
                counts.update(word.findall(message["text"]))
    words, n = zip(*counts.most_common())
    n = np.array(n, dtype=float)
    return list(words), n / n.sum()


def _lengths(rng: np.random.Generator, n: int, median: float, sigma: float, cap: int) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(np.log(median), sigma, n)), 1, cap).astype(np.int64)


def _texts(rng: np.random.Generator, lengths: np.ndarray, words: list[str], p: np.ndarray):
    """One text per length: that many words drawn by frequency, the first capitalised (a polars Series)."""
    import polars as pl

    idx = rng.choice(len(words), size=int(lengths.sum()), p=p)
    vocab = pl.Series("w", words)
    flat = pl.DataFrame({"row": np.repeat(np.arange(len(lengths)), lengths), "w": vocab.gather(idx)})
    joined = flat.group_by("row", maintain_order=True).agg(pl.col("w").str.join(" "))["w"]
    return pl.select(joined.str.slice(0, 1).str.to_uppercase() + joined.str.slice(1)).to_series()


def write_prompt_completion(path: Path, shapes: Shapes, words: list[str], p: np.ndarray) -> None:
    import polars as pl

    rng = np.random.default_rng(shapes.seed)
    prompts = _texts(rng, _lengths(rng, shapes.rows, shapes.prompt_words_median, shapes.prompt_words_sigma,
                                   shapes.max_words), words, p)
    replies = _texts(rng, _lengths(rng, shapes.rows, shapes.reply_words_median, shapes.reply_words_sigma,
                                   shapes.max_words), words, p)
    pl.DataFrame({"prompt": prompts, "completion": replies}).write_ndjson(path)


def write_messages(path: Path, shapes: Shapes, words: list[str], p: np.ndarray) -> None:
    import polars as pl

    rng = np.random.default_rng(shapes.seed + 1)
    turns = rng.integers(shapes.turns_min, shapes.turns_max + 1, shapes.conversations)
    conv = np.repeat(np.arange(shapes.conversations), turns)
    index = np.arange(len(conv)) - np.repeat(np.cumsum(turns) - turns, turns)  # turn number in its chat
    user = index % 2 == 0
    lengths = np.where(user, _lengths(rng, len(conv), shapes.prompt_words_median, shapes.prompt_words_sigma,
                                      shapes.max_words),
                       _lengths(rng, len(conv), shapes.reply_words_median, shapes.reply_words_sigma, shapes.max_words))
    flat = pl.DataFrame({"id": pl.Series(conv).cast(pl.String), "role": np.where(user, "user", "assistant"),
                         "content": _texts(rng, lengths, words, p)})
    flat.group_by("id", maintain_order=True).agg(pl.struct("role", "content").alias("messages")).write_ndjson(path)


def describe(path: Path, tokenizer, sample: int = 2_000) -> dict:
    """Word and policy-token counts (p10 / median / p90) of the first `sample` rows' texts, by field."""
    texts: dict[str, list[str]] = {}
    with open(path) as fh:
        for _, line in zip(range(sample), fh):
            row = json.loads(line)
            if "messages" in row:
                texts.setdefault("turns", []).append(len(row["messages"]))
                for m in row["messages"]:
                    texts.setdefault(m["role"], []).append(m["content"])
            else:
                for key in ("prompt", "completion"):
                    texts.setdefault(key, []).append(row[key])
    out = {}
    for key, values in texts.items():
        if key == "turns":
            out[key] = _quantiles(values)
            continue
        n_tokens = [len(ids) for ids in tokenizer(values, add_special_tokens=False)["input_ids"]]
        n_words = [len(v.split()) for v in values]
        out[key] = {"words": _quantiles(n_words), "tokens": _quantiles(n_tokens),
                    "tokens_per_word": round(sum(n_tokens) / sum(n_words), 3)}
    return out


def _quantiles(values) -> dict:
    q = np.quantile(values, [0.1, 0.5, 0.9])
    return {"p10": float(q[0]), "median": float(q[1]), "p90": float(q[2]), "mean": round(float(np.mean(values)), 2)}


# --- one case in a child process, measured -----------------------------------------------------------------

class TreeMemory:
    """Polls the process tree under `pid` (itself and every descendant): the peak of its summed resident size
    (every `interval` s), each process's own peak (VmHWM, kept from its last sample), the peak of its summed
    Pss (every `pss_interval` s, in a thread of its own) and the most processes seen at once."""

    def __init__(self, pid: int, interval: float = 0.25, pss_interval: float = 5.0):
        self.pid, self.interval, self.pss_interval = pid, interval, pss_interval
        self.peak_rss = self.peak_pss = self.most = 0
        self.hwm: dict[int, int] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(self.sample, interval), daemon=True),
                         threading.Thread(target=self._loop, args=(self.sample_pss, pss_interval), daemon=True)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join()

    @property
    def hwm_sum(self) -> int:
        """The sum of every process's own peak: an upper bound of the tree's peak (the peaks may not coincide)."""
        return sum(self.hwm.values())

    def tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    stat = fh.read()
            except OSError:  # gone meanwhile
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # after "pid (comm) state"
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    @staticmethod
    def _fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
        """Bytes of the `names` fields (in kB) of a /proc file; {} when the process is gone."""
        found = {}
        try:
            with open(path) as fh:
                for line in fh:
                    name = line.split(":", 1)[0]
                    if name in names:
                        found[name] = int(line.split()[1]) * 1024
        except OSError:
            return {}
        return found

    def sample(self) -> None:
        pids = self.tree()
        total = 0
        for pid in pids:
            status = self._fields(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))
            total += status.get("VmRSS", 0)
            if "VmHWM" in status:
                self.hwm[pid] = status["VmHWM"]
        self.peak_rss = max(self.peak_rss, total)
        self.most = max(self.most, len(pids))

    def sample_pss(self) -> None:
        total = sum(self._fields(f"/proc/{pid}/smaps_rollup", ("Pss",)).get("Pss", 0) for pid in self.tree())
        self.peak_pss = max(self.peak_pss, total)

    def _loop(self, sample, interval: float) -> None:
        while not self._stop.is_set():
            sample()
            self._stop.wait(interval)


def run_case(name: str, clean: dict, assets: Path, work: Path, profile_rows: int = 0) -> dict:
    """One clean in a fresh child process (its own empty HF_HOME), timed and measured."""
    case = work / name
    case.mkdir()
    params = {"task": "dataset", "clean": clean}
    (case / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    env = {**os.environ, "HF_HOME": str(case / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "true"}
    command = [sys.executable, "-m", "alol.tools.clean_bench", "--child", str(case), "--assets", str(assets)]
    if profile_rows:
        command += ["--profile", str(profile_rows)]
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the CPU time of the cases before this one
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: stopped with its workers
    try:
        with TreeMemory(proc.pid) as memory:
            output, _ = proc.communicate()
    finally:
        if proc.poll() is None:  # interrupted: stop the child and its map workers
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise AlolError(f"clean_bench: case {name} failed ({proc.returncode}):\n{output[-3000:]}")
    result = json.loads((case / "child.json").read_text())
    # the child's own peak, as it measured it at its end (a last rise can fall after the last sample)
    memory.hwm[proc.pid] = max(memory.hwm.get(proc.pid, 0), int(result["max_rss_gib"]["main"] * GIB))
    return {"wall_s": round(wall, 1),
            "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
            "peak_rss_sum_gib": round(memory.peak_rss / GIB, 3),
            "sum_of_each_process_peak_gib": round(memory.hwm_sum / GIB, 3),
            "each_process_peak_gib": {"main": round(memory.hwm[proc.pid] / GIB, 3), "others": sorted(
                (round(v / GIB, 3) for pid, v in memory.hwm.items() if pid != proc.pid), reverse=True)},
            "peak_pss_sum_gib_sampled_5s": round(memory.peak_pss / GIB, 3), "most_processes": memory.most,
            "load_average_1min": {"start": round(load_before, 2), "end": round(os.getloadavg()[0], 2)},
            **result}


def child(case: Path, assets: Path, profile_rows: int) -> None:
    """What the clean stage does (stages/clean.py), each phase of the dataset task timed."""
    from alol.core.io import write_all
    from alol.core.params import BaseConfig, load_params, section
    from alol.tasks import TASKS, dataset

    phases: dict[str, float] = {}
    peaks: dict[str, float] = {}  # this process's max RSS so far at the end of each phase: where it peaks

    def peak(name: str) -> None:
        peaks[name] = round(TreeMemory._fields("/proc/self/status", ("VmHWM",))["VmHWM"] / GIB, 3)

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = round(phases.get(name, 0.0) + time.perf_counter() - start, 2)
                peak(name)
        return wrapper

    for name in ("load", "read_rows", "build_splits"):  # build() calls them by their module names
        setattr(dataset, name, timed(name, getattr(dataset, name)))
    start = time.perf_counter()
    p = load_params(case / "params.yaml")
    task = TASKS[p["task"]]
    cfg, base = section(p, "clean", task.config), section(p, "base", BaseConfig)
    profiler = cProfile.Profile() if profile_rows else None
    if profiler:
        profiler.enable()
    splits, stats, extra = task.tables(assets, cfg, base)
    if profiler:
        profiler.disable()
    phases["tables"] = round(time.perf_counter() - start, 2)
    peak("tables")
    t = time.perf_counter()
    write_all({**{case / "clean" / f"{n}.parquet": f for n, f in {**extra, **splits}.items()},
               case / "clean" / "stats.json": stats})
    phases["write_parquet"] = round(time.perf_counter() - t, 2)
    peak("write_parquet")
    # VmHWM, not getrusage's ru_maxrss: that one keeps the peak of the memory this process had before its exec
    # (the forked copy of the parent, which holds the generated data)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    parquet = sum(f.stat().st_size for f in (case / "clean").glob("*.parquet"))
    out = {"max_rss_gib": {"main": peaks["write_parquet"], "largest_worker": round(workers / GIB, 3)},
           "phases_s": phases, "main_max_rss_gib_after": peaks, "rows": stats["rows"], "read": stats["read"],
           "dropped": stats["dropped"], "truncated": stats["truncated"], "parquet_mib": round(parquet / (1 << 20), 1)}
    if profiler:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        out["profile_tottime"] = text.getvalue()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(40)
        out["profile_cumulative"] = text.getvalue()
    (case / "child.json").write_text(json.dumps(out))


def _head(source: Path, dest: Path, rows: int) -> Path:
    with open(source) as src, open(dest, "w") as out:
        for _, line in zip(range(rows), src):
            out.write(line)
    return dest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/clean.json"))
    parser.add_argument("--assets", type=Path, default=Path("data/assets"), help="Holding policy/ (its tokenizer).")
    parser.add_argument("--cases", default="prompt_completion,messages")
    parser.add_argument("--profile", type=int, default=0, help="cProfile the first N rows of each file instead.")
    parser.add_argument("--rows", type=int, default=Shapes.rows)
    parser.add_argument("--conversations", type=int, default=Shapes.conversations)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.assets, args.profile)
    # a `kill` unwinds like Ctrl-C: the running case's child is stopped and the temporary folder removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not (args.assets / "policy").is_dir():
        raise AlolError(f"{args.assets / 'policy'}: no policy folder; run `dvc repro download` first (or pass "
                        "--assets, a folder holding policy/).")
    from transformers import AutoTokenizer

    from alol.core.params import BaseConfig

    shapes = Shapes(rows=args.rows, conversations=args.conversations)
    tokenizer = AutoTokenizer.from_pretrained(args.assets / "policy")
    words, p = english_words()
    cases = args.cases.split(",")
    report = {"shapes": dataclasses.asdict(shapes), "vocabulary": {"words": len(words), "source": "chitchat-dataset"},
              "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "targets": TARGETS,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": {"base": dataclasses.asdict(BaseConfig()), "clean": "the dataset task's defaults (format "
                           "auto, chat_template auto, replies all, too_long truncate, held-out splits 0.1 / 0.1 by "
                           "group, num_proc 0: every core)"}, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="alol-clean-bench-") as tmp:
        work = Path(tmp)
        files = {"prompt_completion": (work / "prompt_completion.jsonl", write_prompt_completion, {}),
                 "messages": (work / "messages.jsonl", write_messages, {})}
        for name in cases:
            path, write, clean = files[name]
            t = time.perf_counter()
            write(path, shapes, words, p)
            data = {"file_mib": round(path.stat().st_size / (1 << 20), 1),
                    "generate_s": round(time.perf_counter() - t, 1), "lengths": describe(path, tokenizer)}
            if args.profile:
                path = _head(path, work / f"{name}-head.jsonl", args.profile)
                data["profiled_rows"] = args.profile
                clean = {**clean, "num_proc": 1}
            print(f"{name}: {data['file_mib']} MiB, cleaning...", flush=True)
            result = run_case(name, {"source": str(path), **clean}, args.assets.resolve(), work, args.profile)
            result["meets_targets"] = all(result[k] <= v for k, v in TARGETS.items()) if not args.profile else None
            report["cases"][name] = {**data, **result}
            print(json.dumps({k: v for k, v in report["cases"][name].items() if not k.startswith("profile")}),
                  flush=True)
            path.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
