"""run_trial end to end on the smoke study: contract fields, artifact reuse, rebuilds."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import transformers
from safetensors.torch import load_file

import harness.labels
import harness.pipeline
from harness.config import PipelineConfig, ScheduleConfig, default_trial_config
from harness.evaluation import score
from harness.models import load_teacher
from harness.pipeline import TrialHooks, run_trial, train_baseline
from harness.shared import prepare_shared
from harness.student import resolve_student
from harness.train import Diverged, predict_logits

CONTRACT = ("dev_accuracy", "test_accuracy", "baseline_dev_accuracy", "baseline_test_accuracy",
            "kd_gain", "teacher_agreement", "flops_per_example", "params",
            "non_embedding_params", "latency_ms", "train_flops", "wall_seconds", "T", "T_s",
            "alpha", "num_layers", "hidden_size", "num_heads", "intermediate_size")
# Timing fields differ run to run; everything else must repeat exactly on CPU.
TIMINGS = ("latency_ms", "wall_seconds", "teacher_latency_ms")


@pytest.fixture
def phase_calls(monkeypatch) -> list[str]:
    """Names of the training phases run, recorded around the real training loop."""
    calls: list[str] = []
    real = harness.pipeline.train_phase

    def recording(name, *args, **kwargs):
        calls.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(harness.pipeline, "train_phase", recording)
    monkeypatch.setattr(harness.labels, "train_phase", recording)
    return calls


def test_trial_produces_every_contract_field(smoke_config, smoke_shared, tmp_path):
    trial = default_trial_config(smoke_config, T=2.0, T_s=3.0, alpha=0.5)
    result = run_trial(smoke_config, trial, smoke_shared, save_student_to=tmp_path / "student")
    fields = result.stored_fields()
    for name in CONTRACT:
        assert name in fields and fields[name] is not None, name
    assert 0.0 <= fields["dev_accuracy"] <= 1.0 and 0.0 <= fields["teacher_agreement"] <= 1.0
    assert fields["kd_gain"] == pytest.approx(fields["dev_accuracy"]
                                              - fields["baseline_dev_accuracy"])
    assert (fields["T"], fields["T_s"], fields["alpha"]) == (2.0, 3.0, 0.5)
    assert fields["hidden_size"] == smoke_config.student.hidden_size
    assert fields["num_heads"] == fields["hidden_size"] // smoke_config.student.head_dim
    assert fields["flops_per_example"] < fields["teacher_flops_per_example"]
    assert fields["train_flops"] > 0 and fields["dev_examples"] == len(smoke_shared.text.tokens["dev"])
    assert len(fields["select_accuracies"]) == smoke_config.pipeline.distill.epochs
    assert_saved_student_reproduces(tmp_path / "student", smoke_shared.text,
                                    fields["dev_accuracy"])


def assert_saved_student_reproduces(folder, data, dev_accuracy: float) -> None:
    """The saved student, loaded back by transformers with its saved tokenizer, gives the
    logits the trial measured on dev (within 1e-5) and so its dev accuracy; the tokenizer
    tokenizes the dev texts as ``data`` (``shared.text`` or a pre-trained student's own)
    holds them; ``transformers.pipeline`` loads the folder."""
    student = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    dev = data.tokens["dev"]
    first = tokenizer(data.tokenizer.decode(dev.ids[dev.offsets[0]:dev.offsets[1]],
                                            skip_special_tokens=True))["input_ids"]
    assert tokenizer.vocab_size == data.tokenizer.vocab_size and first[0] == dev.ids[0]
    # The trial's batches (bf16 autocast on CPUs that have it rounds per batch layout).
    logits = predict_logits(student, dev, PipelineConfig().eval_batch_size, torch.device("cpu"),
                            data.pad_id)
    measured = load_file(str(folder / "logits.safetensors"))["dev"]
    torch.testing.assert_close(logits, measured, atol=1e-5, rtol=0)
    assert score(logits, dev.labels).accuracy == dev_accuracy
    classifier = transformers.pipeline("text-classification", model=str(folder), device="cpu")
    assert classifier("a wonderful, moving film")[0]["label"] in student.config.id2label.values()


def test_identical_trial_reuses_artifacts_and_repeats_numbers(smoke_config, smoke_shared,
                                                               cache_dir, phase_calls):
    trial = default_trial_config(smoke_config, hidden_size=64)
    first = run_trial(smoke_config, trial, smoke_shared)
    phase_calls.clear()
    shared_again = prepare_shared(smoke_config, torch.device("cpu"), cache_dir)
    second = run_trial(smoke_config, trial, shared_again)
    assert shared_again.reused == {"tokens": True, "teacher": True}
    assert phase_calls == ["distill"]  # no teacher, no baseline retraining
    same = {k: v for k, v in first.stored_fields().items() if k not in TIMINGS}
    assert {k: v for k, v in second.stored_fields().items() if k not in TIMINGS} == same


def test_changed_teacher_setting_retrains_teacher_and_baseline(smoke_config, smoke_shared,
                                                                cache_dir, phase_calls):
    changed = dataclasses.replace(smoke_config, teacher=dataclasses.replace(
        smoke_config.teacher, lr=smoke_config.teacher.lr / 2))
    shared = prepare_shared(changed, torch.device("cpu"), cache_dir)
    assert shared.teacher_key != smoke_shared.teacher_key
    run_trial(changed, default_trial_config(changed), shared)
    assert phase_calls == ["teacher", "baseline", "distill"]


def test_corrupted_artifact_is_detected_and_rebuilt(smoke_config, smoke_shared, cache_dir,
                                                    phase_calls):
    logits_file = cache_dir / "teacher" / smoke_shared.teacher_key / "logits.safetensors"
    data = bytearray(logits_file.read_bytes())
    data[-5] ^= 0xFF
    logits_file.write_bytes(bytes(data))
    rebuilt = prepare_shared(smoke_config, torch.device("cpu"), cache_dir)
    assert phase_calls == ["teacher"] and not rebuilt.reused["teacher"]
    for split in ("train", "dev", "test"):
        assert torch.equal(rebuilt.teacher_logits[split], smoke_shared.teacher_logits[split])


def test_teacher_layers_students_start_from_the_teacher_before_fine_tuning(
        smoke_config, smoke_shared, monkeypatch):
    config = dataclasses.replace(smoke_config, student=dataclasses.replace(
        smoke_config.student, head_dim=32, init="teacher-layers"))
    starts = {}
    real = harness.pipeline.train_phase

    def recording(name, model, *args, **kwargs):
        starts[name] = model.bert.encoder.layer[0].output.dense.weight.detach().clone()
        return real(name, model, *args, **kwargs)

    monkeypatch.setattr(harness.pipeline, "train_phase", recording)
    result = run_trial(config, default_trial_config(config, num_layers=1, hidden_size=64),
                       smoke_shared)
    assert result.init == "teacher-layers"
    layer = "bert.encoder.layer.0.output.dense.weight"
    before = load_teacher(config.teacher, smoke_shared.data.label_names, smoke_shared.text.tokenizer,
                          config.seed).state_dict()[layer]
    assert torch.equal(smoke_shared.pretrained_teacher.state_dict()[layer], before)
    assert torch.equal(starts["distill"], before)
    assert not torch.allclose(starts["distill"], smoke_shared.teacher.state_dict()[layer].cpu())


def test_hidden_and_attention_matching_across_widths(smoke_config, smoke_shared):
    trial = default_trial_config(smoke_config, hidden_size=32, hidden_weight=1.0,
                                 attention_weight=1.0)
    logged = []
    result = run_trial(smoke_config, trial, smoke_shared,
                       TrialHooks(log=lambda metrics, step: logged.append(metrics)))
    assert result.shape.hidden_size != smoke_shared.teacher.config.hidden_size  # a projection
    keys = set().union(*logged)
    assert {"distill/hidden", "distill/attention", "distill/kd", "distill/ce", "distill/lr",
            "distill/select_accuracy", "distill/evaluation"} <= keys
    student_only = dataclasses.replace(trial, hidden_weight=0.0, attention_weight=0.0)
    plain = run_trial(smoke_config, student_only, smoke_shared)
    # The teacher forward passes that matching needs are counted in train_flops.
    assert result.train_flops > plain.train_flops


def test_tinybert_style_intermediate_phase_then_logit_kd(smoke_config, smoke_shared,
                                                         phase_calls):
    pipeline = dataclasses.replace(smoke_config.pipeline, intermediate=dataclasses.replace(
        smoke_config.pipeline.intermediate, epochs=1.0))
    config = dataclasses.replace(smoke_config, pipeline=pipeline)
    result = run_trial(config, default_trial_config(config, init="baseline"), smoke_shared)
    assert phase_calls[-2:] == ["intermediate", "distill"]
    assert result.init == "baseline"
    assert len(result.select_accuracies) == 1 + smoke_config.pipeline.distill.epochs


def test_nan_loss_stops_the_phase_as_diverged(smoke_config, smoke_shared, monkeypatch):
    def exploding(loss, teacher, projection, teacher_logits):
        return lambda model, batch: {"loss": model(**{k: batch[k] for k in (
            "input_ids", "attention_mask")}).logits.sum() * float("nan")}

    monkeypatch.setattr(harness.pipeline, "loss_function", exploding)
    with pytest.raises(Diverged, match="distill"):
        run_trial(smoke_config, default_trial_config(smoke_config), smoke_shared)


@pytest.mark.parametrize("init", ["random", "teacher-layers", "teacher-pruned"])
def test_with_alpha_zero_the_distilled_arm_is_its_baseline(smoke_config, smoke_shared, cache_dir,
                                                            tmp_path, init):
    """alpha = 0 in the default form (hard labels at T = 1) leaves the label term alone, so
    the distilled arm's training is the baseline's: same init, seed, batch order, budget and
    checkpoint selection. Anything else that differs between the arms (a random number
    drawn by one of them, one more step, another selection) shows here."""
    assert smoke_config.pipeline.hard_label_temperature == "one"  # the default form
    pipeline = dataclasses.replace(smoke_config.pipeline, schedule=ScheduleConfig(
        min_steps=60, eval_every=10, patience=2, keep_best=True))
    config = dataclasses.replace(smoke_config, pipeline=pipeline, student=dataclasses.replace(
        smoke_config.student, head_dim=32, init=init))
    # 32 wide: below the teacher's 64, so teacher-pruned prunes and teacher-layers falls
    # back to random; 64 wide: teacher-layers copies.
    width = 64 if init == "teacher-layers" else 32
    trial = default_trial_config(config, alpha=0.0, T=2.0, T_s=3.0, hidden_size=width)
    shared = prepare_shared(config, torch.device("cpu"), cache_dir)  # importance, if pruned
    result = run_trial(config, trial, shared, save_student_to=tmp_path / "student")
    student = resolve_student(config, trial, shared)
    baseline = train_baseline(config.pipeline, student, 0, shared.teacher_key, shared.cache,
                              shared.device)
    distilled = load_file(str(tmp_path / "student" / "logits.safetensors"))
    for split in ("dev", "test"):
        assert torch.equal(distilled[split], baseline.logits[split]), split
    evaluation = result.evaluation
    assert evaluation.kd_gain == 0.0
    assert evaluation.test_accuracy == evaluation.baseline_test_accuracy
    assert (result.distill_steps, result.distill_best_step, result.distill_lr) == (
        result.baseline_steps, result.baseline_best_step, result.baseline_lr)
    assert result.init == student.baseline_init


def test_checkpoints_are_chosen_on_the_select_split_and_dev_scores_the_final_model(
        smoke_config, smoke_shared, tmp_path):
    """Every dev label flipped: what the two arms train, stop on and end on is unchanged
    (select chooses), and each final model's dev accuracy turns into one minus itself (dev
    scores the final model and nothing else)."""
    schedule = ScheduleConfig(eval_every=10, patience=2, keep_best=True)
    config = dataclasses.replace(smoke_config, pipeline=dataclasses.replace(
        smoke_config.pipeline, schedule=schedule))
    trial = default_trial_config(config, T=2.0, T_s=2.0, alpha=0.5)
    dev = smoke_shared.text.tokens["dev"]
    flipped_text = dataclasses.replace(smoke_shared.text, tokens={
        **smoke_shared.text.tokens, "dev": dataclasses.replace(dev, labels=1 - dev.labels)})
    flipped = dataclasses.replace(smoke_shared, text=flipped_text, cache=tmp_path / "cache")
    results = [run_trial(config, trial, shared) for shared in (smoke_shared, flipped)]
    kept = ("select_accuracies", "distill_steps", "distill_best_step", "baseline_steps",
            "baseline_best_step", "test_accuracy", "baseline_test_accuracy")
    first, second = (result.stored_fields() for result in results)
    assert {k: first[k] for k in kept} == {k: second[k] for k in kept}
    assert len(first["select_accuracies"]) > 2  # a checkpoint chosen among several
    for name in ("dev_accuracy", "baseline_dev_accuracy"):
        assert second[name] == pytest.approx(1 - first[name], abs=1e-12)
