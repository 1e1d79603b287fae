"""A causal-LM study (``task: causal-lm``) through ``python -m harness.study``: prompt/target
data in a local JSONL file, a tiny Llama teacher saved in a local folder (no hub), students
searched by size, confirmed on a fresh seed, the front's students reloaded with
``AutoModelForCausalLM`` and reproducing their stored exact match."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
import transformers
import yaml

from analysis.pareto import main as pareto_main
from harness.causal_lm_pipeline import GENERATIONS_FILE
from harness.generative import exact_matches, greedy_targets, tokenize_examples
from harness.study import main
from harness.study_file import load_study_config
from harness.sweep.storage import open_storage

from .conftest import SMOKE
from .generative_task import digit_tokenizer, reversal_examples, tiny_lm

STUDY = {
    "name": "reverse",
    "task": "causal-lm",
    "data": {"max_length": 16, "select_fraction": 0.1},
    "teacher": {"epochs": 8, "lr": 3e-3, "batch_size": 32, "weight_decay": 0.0,
                "schedule": {"eval_every": 40, "keep_best": True}},
    "student": {"head_dim": 16, "init": "teacher-layers"},
    "pipeline": {"baseline": {"epochs": 5, "lr": 3e-3}, "distill": {"epochs": 5, "lr": 3e-3},
                 "batch_size": 32, "weight_decay": 0.0, "eval_batch_size": 128,
                 "latency_repeats": 2, "schedule": {"eval_every": 40, "keep_best": True}},
    "generation": {"top_k": 4},
    # At the teacher's width (head_dim 16: its 4 heads) students start from its layers.
    "search": {"num_layers": {"choices": [1, 2]}, "hidden_size": {"choices": [64]},
               "alpha": {"low": 0.5, "high": 0.9}},
    "objectives": {"metrics": ["dev_accuracy", "flops_per_token"]},
    "sampler": {"name": "random"},
    "confirm": {"seeds": 1},
    "tracking": {"wandb": "disabled"},
}


@pytest.fixture(scope="module")
def causal_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal-lm")
    data = root / "reverse.jsonl"
    prompts, targets = reversal_examples(1500, seed=0)
    data.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n"
                            for p, t in zip(prompts, targets)))
    teacher = root / "teacher"
    tiny_lm("llama", 2, 64, 4, key_value_heads=2).save_pretrained(teacher)
    digit_tokenizer().save_pretrained(teacher)
    study = {**STUDY, "data": {**STUDY["data"], "source": str(data)},
             "teacher": {**STUDY["teacher"], "source": str(teacher)}}
    path = root / "reverse.yaml"
    path.write_text(yaml.safe_dump(study))
    return root, path


def test_a_causal_lm_study_runs_confirms_and_saves_students_that_reproduce_it(
        causal_study, monkeypatch, cache_dir, capsys):
    root, study_file = causal_study
    monkeypatch.chdir(root)
    storage = f"journal:{root / 'study.journal'}"
    assert main(["--study", str(study_file), "--workers", "1", "--n-trials", "3",
                 "--storage", storage]) == 0
    printed = capsys.readouterr().out  # the report against the cost of a generated token
    assert "dev accuracy vs forward FLOPs per generated token" in printed
    assert "--x flops_per_token" in printed
    study = optuna.load_study(study_name="reverse", storage=open_storage(storage))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    repeats = [t for t in complete if "repeat_of" in t.user_attrs]
    assert len(complete) - len(repeats) == 3 and repeats  # the front confirmed on fresh seeds
    for trial in complete:
        attrs = trial.user_attrs
        assert attrs["dev_accuracy"] == attrs["dev_exact_match"]
        assert attrs["kd_gain"] == pytest.approx(attrs["dev_accuracy"]
                                                 - attrs["baseline_dev_accuracy"])
        assert attrs["distill_steps"] == attrs["baseline_steps"] and attrs["budget_matched"]
        assert trial.values == [attrs["dev_accuracy"], attrs["flops_per_token"]]
        assert attrs["latency_per_token_ms"] > 0
        one_layer = attrs["num_layers"] == 1  # else the teacher's size
        assert (attrs["flops_per_token"] < attrs["teacher_flops_per_token"]) == one_layer
    assert max(t.user_attrs["teacher_dev_accuracy"] for t in complete) > 0.9
    assert max(t.user_attrs["dev_accuracy"] for t in complete) > 0.5

    config = load_study_config(study_file, [])
    tokenizer = digit_tokenizer()
    saved = sorted((root / "runs").glob("reverse-*/students/trial-*"))
    assert saved
    for folder in saved:
        trial = study.trials[int(folder.name.removeprefix("trial-"))]
        student = transformers.AutoModelForCausalLM.from_pretrained(folder)
        stored = json.loads((folder / GENERATIONS_FILE).read_text())
        dev = tokenize_examples(transformers.AutoTokenizer.from_pretrained(folder),
                                *_dev_texts(config), 16)
        generated = greedy_targets(student, dev, 64, torch.device("cpu"),
                                   tokenizer.pad_token_id, tokenizer.eos_token_id, 5)
        assert generated == stored["dev"]
        assert sum(exact_matches(generated, dev)) / len(dev) == trial.user_attrs["dev_accuracy"]

    out = root / "report"
    assert pareto_main(["--study-name", "reverse", "--storage", storage, "--x",
                        "flops_per_token", "--out", str(out)]) == 0
    front = pd.read_csv(out / "pareto.csv")
    assert set(front["trial"]) <= {t.number for t in complete}
    assert "flops_per_token" in front.columns


def _dev_texts(config) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from harness.prompt_data import load_prompt_target_data

    dev = load_prompt_target_data(config.data).splits["dev"]
    return dev.prompts, dev.targets


def test_bad_causal_lm_settings_are_refused_before_training(causal_study, capsys, tmp_path):
    root, study_file = causal_study
    encoder = tmp_path / "bert"
    transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=14, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64)).save_pretrained(encoder)
    digit_tokenizer().save_pretrained(encoder)
    for override, named in (("student.init=teacher-pruned", "student.init"),
                            ("transfer.copies=2", "transfer.copies"),
                            ("objectives.metrics=[dev_accuracy, latency_ms]", "objectives"),
                            ("data.prompt_column=question", "data.prompt_column: no column"),
                            ("data.select_fraction=0", "data.select_fraction"),
                            ("objectives.metrics=[dev_token_accuracy]", "objectives"),
                            (f"teacher.source={encoder}", "needs a decoder-only family")):
        assert main(["--study", str(study_file), "--set", override, "--n-trials", "1",
                     "--storage", f"journal:{tmp_path / 'refused.journal'}"]) == 2
        assert named in capsys.readouterr().err
    assert not (tmp_path / "refused.journal").exists()
    # A classifier generates no tokens to count.
    assert main(["--study", str(SMOKE), "--set",
                 "objectives.metrics=[dev_accuracy, flops_per_token]"]) == 2
    assert "flops_per_token is measured for task: causal-lm only" in capsys.readouterr().err
