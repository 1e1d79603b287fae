"""Generative studies (``task: causal-lm`` and ``seq2seq``) through ``python -m harness.study``:
prompt/target data in a local JSONL file, a tiny Llama (or T5) teacher saved in a local
folder (no hub), students searched by size, confirmed on a fresh seed, the front's students
reloaded with ``AutoModelForCausalLM`` (or ``AutoModelForSeq2SeqLM``) and reproducing their
stored exact match (and BLEU)."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
import torch
import transformers
import yaml

from analysis.frame import study_frame
from analysis.pareto import main as pareto_main
from analysis.report import build_report, front_rows
from harness.generative import bleu, exact_matches, greedy_targets, tokenize_examples
from harness.generative_pipeline import GENERATIONS_FILE
from harness.study import main
from harness.study_file import load_study_config
from harness.sweep.storage import open_storage

from .conftest import SMOKE
from .generative_task import digit_tokenizer, reversal_examples, tiny_lm, tiny_t5

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
               "alpha": {"low": 0.5, "high": 0.9},
               # word-level KD on the data's targets, or on the teacher's greedy outputs
               "kd_level": {"choices": ["word", "sequence"]}},
    "objectives": {"metrics": ["dev_accuracy", "flops_per_token"]},
    "sampler": {"name": "random"},
    "confirm": {"seeds": 1},
    "tracking": {"wandb": "disabled"},
}


# Per task: its teacher, the auto class its students load with, the decoder's start token
# (None: a causal LM), and the epochs its tiny models need (T5 learns the reversal slower).
TASKS = {
    "causal-lm": (lambda: tiny_lm("llama", 2, 64, 4, key_value_heads=2),
                  transformers.AutoModelForCausalLM, None, 8, 5),
    "seq2seq": (lambda: tiny_t5(2, 64, 4), transformers.AutoModelForSeq2SeqLM, 0, 20, 12),
}


def write_study(root, task: str):
    teacher_model, _, _, teacher_epochs, student_epochs = TASKS[task]
    data = root / "reverse.jsonl"
    prompts, targets = reversal_examples(1500, seed=0)
    data.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n"
                            for p, t in zip(prompts, targets)))
    teacher = root / "teacher"
    teacher_model().save_pretrained(teacher)
    digit_tokenizer().save_pretrained(teacher)
    arms = {arm: {**STUDY["pipeline"][arm], "epochs": student_epochs}
            for arm in ("baseline", "distill")}
    study = {**STUDY, "task": task, "data": {**STUDY["data"], "source": str(data)},
             "teacher": {**STUDY["teacher"], "source": str(teacher), "epochs": teacher_epochs},
             "pipeline": {**STUDY["pipeline"], **arms}}
    path = root / "reverse.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="module")
def causal_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal-lm")
    return root, write_study(root, "causal-lm")


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_generative_study_runs_confirms_and_saves_students_that_reproduce_it(
        task, tmp_path, monkeypatch, cache_dir, capsys):
    root = tmp_path
    study_file = write_study(root, task)
    _, auto_class, start, _, _ = TASKS[task]
    monkeypatch.chdir(root)
    storage = f"journal:{root / 'study.journal'}"
    trials = {"causal-lm": 3, "seq2seq": 2}[task]
    assert main(["--study", str(study_file), "--workers", "1", "--n-trials", str(trials),
                 "--storage", storage]) == 0
    printed = capsys.readouterr().out  # the report against the cost of a generated token
    assert "dev accuracy vs forward FLOPs per generated token" in printed
    assert "--x flops_per_token" in printed
    study = optuna.load_study(study_name="reverse", storage=open_storage(storage))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    repeats = [t for t in complete if "repeat_of" in t.user_attrs]
    assert len(complete) - len(repeats) == trials and repeats  # the front confirmed on fresh seeds
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
        assert ("dev_bleu" in attrs) == (task == "seq2seq")
    # The random sampler (seeded) draws both: sequence-level trials ran on the teacher's outputs.
    assert {t.user_attrs["kd_level"] for t in complete} == {"word", "sequence"}
    assert max(t.user_attrs["teacher_dev_accuracy"] for t in complete) > 0.9
    assert max(t.user_attrs["dev_accuracy"] for t in complete) > 0.5

    config = load_study_config(study_file, [])
    tokenizer = digit_tokenizer()
    saved = sorted((root / "runs").glob("reverse-*/students/trial-*"))
    assert saved
    for folder in saved:
        trial = study.trials[int(folder.name.removeprefix("trial-"))]
        student = auto_class.from_pretrained(folder)
        stored = json.loads((folder / GENERATIONS_FILE).read_text())
        dev = tokenize_examples(transformers.AutoTokenizer.from_pretrained(folder),
                                *_dev_texts(config), 16, decoder_start_id=start)
        generated = greedy_targets(student, dev, 64, torch.device("cpu"),
                                   tokenizer.pad_token_id, tokenizer.eos_token_id, 5)
        assert generated == stored["dev"]
        assert sum(exact_matches(generated, dev)) / len(dev) == trial.user_attrs["dev_accuracy"]
        if task == "seq2seq":
            assert bleu(tokenizer, generated, dev) == pytest.approx(trial.user_attrs["dev_bleu"])

    out = root / "report"
    assert pareto_main(["--study-name", "reverse", "--storage", storage, "--x",
                        "flops_per_token", "--out", str(out)]) == 0
    front = pd.read_csv(out / "pareto.csv")
    assert set(front["trial"]) <= {t.number for t in complete}
    assert "flops_per_token" in front.columns
    # The front table says which students learnt from the teacher's outputs.
    report = build_report(study_frame(study), x="flops_per_token")
    headers, rows = front_rows(report)
    alphas = [row[headers.index("alpha")] for row in rows[1:]]  # the teacher's row first
    assert ([alpha.endswith(", sequence-level") for alpha in alphas]
            == [level == "sequence" for level in report.front["kd_level"]])


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
                            (f"teacher.source={encoder}", "needs a model of the families")):
        assert main(["--study", str(study_file), "--set", override, "--n-trials", "1",
                     "--storage", f"journal:{tmp_path / 'refused.journal'}"]) == 2
        assert named in capsys.readouterr().err
    assert not (tmp_path / "refused.journal").exists()
    # A classifier generates no tokens to count.
    assert main(["--study", str(SMOKE), "--set",
                 "objectives.metrics=[dev_accuracy, flops_per_token]"]) == 2
    assert "flops_per_token is measured for task: causal-lm and seq2seq only" in \
        capsys.readouterr().err
    # Sequence-level KD distils generated targets; a classifier has none.
    assert main(["--study", str(SMOKE), "--set",
                 "search.kd_level={choices: [word, sequence]}"]) == 2
    assert "search.kd_level.choices[1]: sequence-level KD" in capsys.readouterr().err
    # A seq2seq study's teacher is an encoder-decoder.
    assert main(["--study", str(study_file), "--set", "task=seq2seq", "--n-trials", "1",
                 "--storage", f"journal:{tmp_path / 'refused.journal'}"]) == 2
    assert "task: seq2seq needs a model of the families ['t5']" in capsys.readouterr().err
    assert not (tmp_path / "refused.journal").exists()
