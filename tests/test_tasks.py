"""The task registry (alol/tasks: one record per `task:` value) and the canonical-table check."""

from __future__ import annotations

import dataclasses
import json
import pkgutil

import polars as pl
import pytest

import alol.tasks
from alol.core.errors import AlolError
from alol.core.params import BaseConfig, SCALARS, from_dict, section_class
from alol.tasks import HELPERS, REQUIRED, TASKS, Task, check_splits, check_table
from alol.tasks.dataset import SplitConfig
from conftest import REPO, build_tokenizer


def test_every_task_module_is_registered_and_nothing_else():
    """Adding a task is one module: TASKS lists every module of alol/tasks except the helpers."""
    modules = {m.name for m in pkgutil.iter_modules(alol.tasks.__path__)}
    assert set(TASKS) == modules - set(HELPERS)
    for name, task in TASKS.items():
        module = __import__(f"alol.tasks.{name}", fromlist=["TASK"])
        assert module.TASK is task and task.name == name
        assert dataclasses.is_dataclass(task.config) and task.config()  # the defaults build
        assert callable(task.fetch) and callable(task.build)
        assert not set(task.optional_columns) & set(REQUIRED) and set(task.sometimes) <= set(task.optional_columns)


def test_params_read_the_registry():
    assert list(TASKS) == ["dataset", "hh", "reddit", "wow", "comet"]
    assert list(TASKS)[0] == SCALARS["task"][0] == "dataset"  # the default task
    for name, task in TASKS.items():
        assert section_class("clean", name) is task.config


def test_params_import_no_task_module():
    import subprocess
    import sys

    code = "import sys, alol.core.params; print(sorted(m for m in sys.modules if m.startswith(('alol.tasks', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_asset_deps_are_the_pipelines_clean_deps():
    dataset = TASKS["dataset"]
    noisy = dataset.config()
    noisy.noise.fraction = 0.5
    assert dataset.assets(dataset.config()) == ("policy",)  # the data is read where it is: a dep of its own
    assert dataset.assets(noisy) == ("insults", "policy")  # pipelines/noisy
    noisy.noise.insult_share = 0.0  # only misaligned replies: no insults read
    assert dataset.assets(noisy) == ("policy",)
    assert {n: TASKS[n].assets(TASKS[n].config()) for n in ("hh", "reddit", "wow", "comet")} == {
        "hh": ("hh",), "reddit": ("policy", "reddit"), "wow": ("policy", "wow"), "comet": ("comet",)}


def test_data_deps_are_the_local_source():
    """The dataset task's source, where it is a path, is a dep of clean; a hub id is not (clean.revision pins it)."""
    dataset = TASKS["dataset"]
    assert dataset.data(dataset.config()) == ("data/assets/chitchat/conversations.jsonl",)  # the default's
    sources = {"my/data.parquet": ("my/data.parquet",), "train.jsonl": ("train.jsonl",),
               "../shared/chats": ("../shared/chats",), "HuggingFaceH4/ultrachat_200k": (), "imdb": ()}
    assert {s: dataset.data(dataset.config(source=s)) for s in sources} == sources
    assert {n: TASKS[n].data(TASKS[n].config()) for n in ("hh", "reddit", "wow", "comet")} == {
        "hh": (), "reddit": (), "wow": (), "comet": ()}


def test_provides_answers_from_the_record():
    assert TASKS["hh"].provides("candidates") and TASKS["hh"].provides("candidates", pl.DataFrame({"x": [1]}))
    dataset = TASKS["dataset"]
    # a `sometimes` column: only where the table at hand has it (preference data, unpaired labels, noise)
    pairs = pl.DataFrame({"candidates": [["a", "b"]], "label": [True], "noise": ["clean"]})
    for column in ("candidates", "label", "noise"):
        assert not dataset.provides(column) and not dataset.provides(column, pl.DataFrame({"x": [1]}))
        assert dataset.provides(column, pairs)
    assert dataset.provides("messages") and not dataset.provides("knowledge", pairs.with_columns(knowledge=pl.lit("k")))
    assert TASKS["wow"].provides("knowledge") and TASKS["reddit"].provides("split_name")


# --- check_table ---------------------------------------------------------------------------------

TOY = Task(name="toy", config=BaseConfig, fetch=lambda *a: {}, build=lambda *a: ({}, {}, {}),
           optional_columns={"score": pl.Float64, "noise": pl.String}, sometimes=("noise",))


def table(groups=("a", "b"), **columns) -> pl.DataFrame:
    n = len(groups)
    data = {"prompt_id": [f"p{i}" for i in range(n)], "group_id": list(groups), "prompt": ["x"] * n,
            "completion": ["y"] * n, "context": ["c"] * n, "score": [0.5] * n}
    data.update(columns)
    return pl.DataFrame(data)


def test_a_good_table_passes():
    check_table(TOY, "train", table())
    check_table(TOY, "train", table(noise=["clean", "insult"]))  # a `sometimes` column may be there
    check_splits(TOY, {"train": table(("a", "b")), "validation": table(("c",)), "test": table(("d", "d"))})


@pytest.mark.parametrize("frame, fragment", [
    (table().drop("context"), "the train table has no column 'context'"),
    (table().drop("score"), "the train table has no column(s) ['score'], which the task declares"),
    (table(score=[1, 2]), "column 'score' is Int64, expected Float64"),
    (table(prompt=[1, 2]), "column 'prompt' is Int64, expected String"),
    (table(completion=["y", None]), "column 'completion' has 1 null value(s)"),
    (table(extra=["e", "f"]), "has column 'extra', which the task does not declare"),
    (table().head(0), "the train table is empty"),
])
def test_each_broken_contract_names_task_split_and_column(frame, fragment):
    with pytest.raises(AlolError) as err:
        check_table(TOY, "train", frame)
    assert str(err.value).startswith("clean (task toy): the train table ") and fragment in str(err.value)


def test_a_group_in_two_splits_is_refused_unless_the_task_keeps_published_splits():
    splits = {"train": table(("a", "b")), "validation": table(("c",)), "test": table(("b",))}
    with pytest.raises(AlolError, match=r"clean \(task toy\): the test table column 'group_id' has group 'b', "
                                        r"which the train split has too"):
        check_splits(TOY, splits)
    check_splits(dataclasses.replace(TOY, disjoint_groups=False), splits)


# --- every reader's tables pass the check (the declarations match what the readers write) -----

def test_dataset_tables_pass_on_the_default_data(tmp_path):
    from test_clean import ROOT_CLEAN, chitchat_file, synthetic

    build_tokenizer(tmp_path / "policy")
    source = chitchat_file(synthetic(12), tmp_path / "chitchat" / "conversations.jsonl", tmp_path / "work")
    task = TASKS["dataset"]
    cfg = from_dict(task.config, {**ROOT_CLEAN, "source": str(source), "splits": {"validation": 2, "test": 2}}, "clean")
    splits, stats, extra = task.tables(tmp_path, cfg, BaseConfig())
    assert set(splits) == {"train", "validation", "test"} and extra == {} and stats["read"] == {"train": 12}
    assert splits["train"].schema["messages"] == alol.tasks.base.MESSAGES
    assert splits["train"].columns == ["prompt_id", "group_id", "prompt", "completion", "context", "messages",
                                       "prompt_tokens", "completion_tokens"]


def test_dataset_tables_pass_with_every_sometimes_column(tmp_path):
    """Preference pairs (candidates) and unpaired labels: declared, typed as the record says."""
    build_tokenizer(tmp_path / "policy")
    task = TASKS["dataset"]
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "split": s}
            for i, s in enumerate(("train", "validation", "test"))]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = task.config(source=str(tmp_path / "pairs.jsonl"), splits=SplitConfig(column="split"))
    splits, _, _ = task.tables(tmp_path, cfg, BaseConfig())
    assert splits["test"]["candidates"].to_list() == [["c2", "r2"]] and task.provides("candidates", splits["test"])
    labelled = [{"prompt": f"p{i}", "completion": f"c{i}", "label": i != 1, "split": s}
                for i, s in enumerate(("train", "validation", "test"))]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled))
    cfg = task.config(source=str(tmp_path / "labels.jsonl"), splits=SplitConfig(column="split"))
    splits, _, _ = task.tables(tmp_path, cfg, BaseConfig())
    assert splits["validation"]["label"].to_list() == [False] and not task.provides("candidates", splits["test"])


def test_noisy_dataset_tables_pass(tmp_path):
    from test_clean import ROOT_CLEAN, chitchat_file, synthetic
    from test_noise import CSV

    build_tokenizer(tmp_path / "policy")
    (tmp_path / "insults").mkdir()
    (tmp_path / "insults" / "fulltrain.csv").write_text(CSV)
    source = chitchat_file(synthetic(12), tmp_path / "chitchat" / "conversations.jsonl", tmp_path / "work")
    task = TASKS["dataset"]
    cfg = from_dict(task.config, {**ROOT_CLEAN, "source": str(source), "splits": {"validation": 3, "test": 3},
                                  "noise": {"fraction": 0.25}}, "clean")  # as test_noise's stage test
    splits, _, _ = task.tables(tmp_path, cfg, BaseConfig())
    assert "noise" in splits["train"].columns and "noise" not in splits["test"].columns
    assert task.provides("noise", splits["train"]) and not task.provides("noise", splits["test"])


def test_hh_tables_pass(tmp_path):
    from test_hh import pro_folder

    pro_folder(tmp_path / "hh")
    splits, stats, extra = TASKS["hh"].tables(tmp_path, TASKS["hh"].config(), BaseConfig())
    assert splits["train"].schema["candidate_logits"] == pl.List(pl.Float64) and extra == {}


def test_reddit_tables_pass_and_write_the_train_replies(tmp_path):
    from test_reddit import dialogpt_tokenizer, kaggle_folder

    kaggle_folder(tmp_path / "reddit")
    dialogpt_tokenizer(tmp_path / "policy")
    cfg = TASKS["reddit"].config(test_rows=2, validation_rows=2)
    splits, _, extra = TASKS["reddit"].tables(tmp_path, cfg, BaseConfig())
    assert list(extra) == ["train_replies"] and extra["train_replies"].columns == ["completion"]


def test_wow_tables_pass(tmp_path):
    from test_wow import data_folder

    data_folder(tmp_path / "wow")
    build_tokenizer(tmp_path / "policy")
    splits, _, _ = TASKS["wow"].tables(tmp_path, TASKS["wow"].config(dataset="faithdial_wow"), BaseConfig())
    assert set(splits["train"]["source"]) == {"wow", "faithdial"}


def test_comet_tables_pass(tmp_path):
    from test_comet import atomic10x_file

    atomic10x_file(tmp_path / "comet" / "ATOMIC10X.jsonl")
    splits, _, _ = TASKS["comet"].tables(tmp_path, TASKS["comet"].config(), BaseConfig())
    assert splits["validation"].height == 6


def test_copy_source_tasks_need_a_source(tmp_path):
    from alol.core.fetch import DownloadConfig

    for name in ("hh", "reddit", "wow", "comet"):
        with pytest.raises(AlolError, match=f"download.source is required for the {name} task"):
            TASKS[name].fetch(DownloadConfig(), tmp_path, tmp_path)


def test_what_the_stage_graph_reads_off_the_records():
    """The clean stage's DVC outs and params per task (today's pipelines/*/dvc.yaml)."""
    assert {n: t.extra_tables for n, t in TASKS.items() if t.extra_tables} == {"reddit": ("train_replies",)}
    assert {n for n, t in TASKS.items() if not t.reads_base} == {"hh", "reddit"}


def test_a_build_returning_other_tables_is_refused(tmp_path):
    good = {"train": table(("a",)), "validation": table(("b",)), "test": table(("c",))}
    toy = dataclasses.replace(TOY, build=lambda *a: (good, {}, {"replies": table()}))
    with pytest.raises(AlolError, match=r"clean \(task toy\): build\(\) returned splits \['test', 'train', "
                                        r"'validation'\] and extra tables \['replies'\]; expected"):
        toy.tables(tmp_path, None, None)
    dataclasses.replace(toy, extra_tables=("replies",)).tables(tmp_path, None, None)
