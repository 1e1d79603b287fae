"""Students as deployed (harness.deploy, harness.sweep.deployment): the ONNX files beside a
saved student, read back by ONNX Runtime with the student's tokenizer; int8 scores counted
by hand; a failed check recorded and its files removed; a smoke study's deployed front and
its report against a recomputation from the stored attributes; int8_bytes as an objective."""

from __future__ import annotations

import numpy as np
import onnxruntime
import optuna
import pandas as pd
import pytest
import torch
import transformers
from safetensors.torch import load_file

import harness.onnx_export
from analysis.frame import load_study_frame
from analysis.pareto import main as pareto_main
from analysis.report import build_report, render_markdown
from analysis.stats import paired_difference_interval
from harness.deploy import INT8_FILE, ONNX_FILE, deploy_student, int8_scores
from harness.pipeline import save_student, split_logits
from harness.study import main
from harness.sweep.deployment import deploy_in_trial
from harness.sweep.study_record import DEPLOYED

from .conftest import SMOKE
from .test_study import load, run_smoke

DEPLOYED_FIELDS = ("onnx_bytes", "int8_bytes", "int8_dev_accuracy", "int8_test_accuracy",
                   "int8_dev_agreement", "int8_latency_ms", "onnx_latency_ms",
                   "eager_latency_ms", "int8_examples_per_second", "deploy_provenance")


@pytest.fixture(scope="module")
def saved_teacher(smoke_shared, tmp_path_factory):
    """The smoke study's fine-tuned teacher saved as a trial saves its student: trained
    weights, so int8 has something to keep."""
    folder = tmp_path_factory.mktemp("student") / "trial-0"
    text = smoke_shared.text
    save_student(smoke_shared.teacher, text.tokenizer,
                 split_logits(smoke_shared.teacher, text, torch.device("cpu"), 64), folder)
    return folder


def test_a_saved_student_is_deployed_beside_itself_and_onnx_runtime_reads_it_back(
        saved_teacher, smoke_shared):
    text = smoke_shared.text
    fields = deploy_student(saved_teacher, text, batch_size=64, latency_repeats=5)
    onnx, int8 = saved_teacher / ONNX_FILE, saved_teacher / INT8_FILE
    assert fields["onnx_bytes"] == onnx.stat().st_size
    assert fields["int8_bytes"] == int8.stat().st_size < 0.6 * onnx.stat().st_size
    # A plain client: the student's own tokenizer and an ONNX Runtime session of the file.
    tokenizer = transformers.AutoTokenizer.from_pretrained(saved_teacher)
    texts = list(smoke_shared.data.dev.texts[:16])
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="np")
    session = onnxruntime.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    feeds = {i.name: encoded[i.name].astype(np.int64) for i in session.get_inputs()}
    (logits,) = session.run(["logits"], feeds)
    # Against the saved student in fp32 as transformers loads it; the trial's stored logits
    # were computed under bf16 autocast on CPUs with bf16, so only their argmax is compared.
    student = transformers.AutoModelForSequenceClassification.from_pretrained(saved_teacher)
    with torch.no_grad():
        eager = student.eval()(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits
    np.testing.assert_allclose(logits, eager.numpy(), atol=1e-3, rtol=0)
    measured = load_file(str(saved_teacher / "logits.safetensors"))["dev"][:16]
    assert (logits.argmax(-1) == measured.argmax(-1).numpy()).all()
    int8_session = onnxruntime.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    assert int8_session.run(["logits"], feeds)[0].shape == (16, 2)
    # The int8 scores against the trial's predictions and the labels.
    for split in ("dev", "test"):
        labels = text.tokens[split].labels
        assert fields[f"int8_{split}_accuracy"] == pytest.approx(
            float((load_file(str(saved_teacher / "logits.safetensors"))[split].argmax(-1)
                   == labels).double().mean())
            + (fields[f"int8_{split}_gained"] - fields[f"int8_{split}_lost"]) / len(labels),
            abs=1e-12)
    assert fields["int8_dev_agreement"] > 0.9
    for name in ("onnx", "int8"):
        assert 0 < fields[f"{name}_latency_ms"] <= fields[f"{name}_latency_p90_ms"]
    assert fields["eager_latency_ms"] > 0 and fields["deploy_length"] == text.seq_len
    assert fields["deploy_provenance"]["onnxruntime"] == onnxruntime.__version__


def test_int8_scores_count_each_example_once():
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    fp32 = torch.tensor([0, 1, 0, 0, 0, 1])   # right on 0, 1, 3
    int8 = torch.tensor([0, 0, 1, 0, 0, 0])   # right on 0, 2, 3, 5
    scores = int8_scores("dev", int8, fp32, labels)
    assert scores == {"int8_dev_accuracy": 4 / 6, "int8_dev_agreement": 3 / 6,
                      "int8_dev_gained": 2, "int8_dev_lost": 1}


def test_a_student_whose_export_disagrees_is_recorded_with_its_reason_and_not_kept(
        saved_teacher, smoke_shared, smoke_config, monkeypatch):
    monkeypatch.setattr(harness.onnx_export, "LOGIT_TOLERANCE", -1.0)  # nothing agrees
    fields = deploy_in_trial(smoke_config, smoke_shared, "resized-teacher", saved_teacher)
    assert fields.keys() == {"deploy_error"} and "disagree" in fields["deploy_error"]
    assert not (saved_teacher / ONNX_FILE).exists() and not (saved_teacher / INT8_FILE).exists()


@pytest.mark.slow
def test_a_smoke_studys_front_is_deployed_and_reported(in_tmp):
    code, storage = run_smoke(in_tmp, 2, "--set", "deploy.export=front",
                              "--set", "deploy.latency_repeats=5")
    assert code == 0
    study = load(storage)
    kept = {t.number for t in study.best_trials}
    records = {int(key.removeprefix(DEPLOYED)): value for key, value in study.user_attrs.items()
               if key.startswith(DEPLOYED)}
    assert kept and kept <= set(records)
    for number, fields in records.items():
        folder = in_tmp / study.trials[number].user_attrs["student_path"]
        assert set(DEPLOYED_FIELDS) <= set(fields)
        assert fields["int8_bytes"] == (folder / INT8_FILE).stat().st_size
        assert (folder / ONNX_FILE).is_file()
    # Run again: nothing left to do, nothing deployed twice.
    assert run_smoke(in_tmp, 2, "--set", "deploy.export=front")[0] == 0
    assert {k: v for k, v in load(storage).user_attrs.items() if k.startswith(DEPLOYED)} == {
        DEPLOYED + str(number): fields for number, fields in records.items()}

    report = build_report(load_study_frame("smoke-test", storage))
    # The deployed front by hand: complete search trials with a record, none dominated on
    # (int8 dev accuracy up, int8 latency down).
    points = {n: (f["int8_dev_accuracy"], f["int8_latency_ms"]) for n, f in records.items()}
    front = {n for n, (acc, lat) in points.items() if not any(
        a >= acc and t <= lat and (a, t) != (acc, lat) for a, t in points.values())}
    assert set(report.deployed["trial"]) == front
    for _, row in report.deployed.iterrows():
        trial, fields = study.trials[int(row["trial"])], records[int(row["trial"])]
        n = trial.user_attrs["dev_examples"]
        assert row["int8_dev_change"] == pytest.approx(
            (fields["int8_dev_gained"] - fields["int8_dev_lost"]) / n, abs=1e-12)
        low, high = paired_difference_interval(round(fields["int8_dev_accuracy"] * n),
                                               fields["int8_dev_gained"],
                                               fields["int8_dev_lost"], n)
        assert (row["int8_dev_change_ci_low"], row["int8_dev_change_ci_high"]) == (
            pytest.approx(float(low)), pytest.approx(float(high)))
    assert "## Deployed front" in render_markdown(report)

    out = in_tmp / "report"
    assert pareto_main(["--study-name", "smoke-test", "--storage", storage, "--x",
                        "int8_latency_ms", "--out", str(out)]) == 0
    csv = pd.read_csv(out / "pareto.csv")
    assert set(csv["trial"]) == front  # dev accuracy against int8 latency: the same points
    assert {"int8_dev_accuracy", "int8_bytes", "int8_dev_change_ci_low"} <= set(csv.columns)


@pytest.mark.slow
def test_int8_bytes_is_an_objective_when_every_trial_is_deployed(in_tmp):
    code, storage = run_smoke(in_tmp, 1, "--set", "deploy.export=every-trial",
                              "--set", "objectives.metrics=[dev_accuracy, int8_bytes]",
                              "--set", "deploy.latency_repeats=5")
    assert code == 0
    study = load(storage)
    (trial,) = study.trials
    folder = in_tmp / trial.user_attrs["student_path"]
    assert trial.values[1] == trial.user_attrs["int8_bytes"] == (folder / INT8_FILE).stat().st_size
    assert "int8_latency_ms" not in trial.user_attrs  # untimed within a trial...
    timed = study.user_attrs[DEPLOYED + str(trial.number)]  # ...timed once the study is over
    assert timed["int8_latency_ms"] > 0 and "int8_bytes" not in timed  # not exported again


def test_int8_bytes_without_every_trial_deployment_is_refused(in_tmp, capsys):
    code = main(["--study", str(SMOKE), "--n-trials", "1", "--wandb", "disabled",
                 "--set", "objectives.metrics=[dev_accuracy, int8_bytes]"])
    assert code == 2
    assert "objectives.metrics: int8_bytes" in capsys.readouterr().err
    assert not (in_tmp / "runs").exists()


def test_optuna_refuses_to_change_a_finished_trial(tmp_path):
    # Why the front's deployment is a study attribute: a finished trial's are frozen.
    study = optuna.create_study()
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(RuntimeError):
        study._storage.set_trial_user_attr(study.trials[0]._trial_id, "int8_bytes", 1)
