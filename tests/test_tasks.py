"""The task registry (alol/tasks: one record per `task:` value) and the canonical-table check."""

from __future__ import annotations

import dataclasses
import json
import pkgutil

import polars as pl
import pytest

import alol.tasks
from alol.core.errors import AlolError
from alol.core.params import BaseConfig, SCALARS, section_class
from alol.tasks import HELPERS, REQUIRED, TASKS, Task, check_splits, check_table
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
    assert list(TASKS)[0] == SCALARS["task"][0] == "chitchat"  # the default task
    for name, task in TASKS.items():
        assert section_class("clean", name) is task.config


def test_params_import_no_task_module():
    import subprocess
    import sys

    code = "import sys, alol.core.params; print(sorted(m for m in sys.modules if m.startswith(('alol.tasks', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_asset_deps_are_the_pipelines_clean_deps():
    chitchat = TASKS["chitchat"]
    noisy = chitchat.config()
    noisy.noise.fraction = 0.5
    assert chitchat.assets(chitchat.config()) == ("chitchat", "policy")
    assert chitchat.assets(noisy) == ("chitchat", "insults", "policy")  # pipelines/noisy
    assert {n: TASKS[n].assets(TASKS[n].config()) for n in ("hh", "reddit", "wow", "comet")} == {
        "hh": ("hh",), "reddit": ("policy", "reddit"), "wow": ("policy", "wow"), "comet": ("comet",)}


def test_provides_answers_from_the_record():
    assert TASKS["hh"].provides("candidates") and not TASKS["chitchat"].provides("candidates")
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

def test_chitchat_tables_pass(tmp_path):
    from test_clean import synthetic

    build_tokenizer(tmp_path / "policy")
    (tmp_path / "chitchat").mkdir()
    (tmp_path / "chitchat" / "dataset.json").write_text(json.dumps(synthetic(12)))
    task = TASKS["chitchat"]
    cfg = task.config(validation_conversations=2, test_conversations=2)
    splits, stats, extra = task.tables(tmp_path, cfg, BaseConfig())
    assert set(splits) == {"train", "validation", "test"} and extra == {} and stats["conversations"] == 12
    assert splits["train"].schema["messages"] == alol.tasks.base.MESSAGES


def test_noisy_chitchat_tables_pass(tmp_path):
    from test_clean import synthetic
    from test_noise import CSV

    build_tokenizer(tmp_path / "policy")
    (tmp_path / "chitchat").mkdir()
    (tmp_path / "insults").mkdir()
    (tmp_path / "chitchat" / "dataset.json").write_text(json.dumps(synthetic(12)))
    (tmp_path / "insults" / "fulltrain.csv").write_text(CSV)
    task = TASKS["chitchat"]
    cfg = task.config(validation_conversations=3, test_conversations=3, max_rows={"train": 0})
    cfg.noise.fraction = 0.25  # as test_noise's stage test: 4 of 18 train rows, 2 of them insults
    splits, _, _ = task.tables(tmp_path, cfg, BaseConfig())
    assert "noise" in splits["train"].columns and "noise" not in splits["test"].columns


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
