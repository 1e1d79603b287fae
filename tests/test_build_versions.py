"""An artifact's key carries the version of the code that builds it
(``harness.artifacts.BUILD_VERSIONS``), so a changed training loop cannot silently reuse
teachers and baselines the old loop trained. This test makes a change to that code come
with a new version: it hashes the source of what each kind's build runs and compares it
with the hash recorded below for the kind's current version."""

from __future__ import annotations

import hashlib
import inspect

import pytest

from harness import data, evaluation, models, pipeline, pruning, shared, train, transfer
from harness.artifacts import BUILD_VERSIONS

# The training loop, as the teacher's fine-tune and the baselines run it.
TRAINING = (train.train_phase, train.TrainSettings, train._Best, train.dev_evaluation,
            train.dev_accuracy,
            train.length_grouped_batches, train._warmup_linear_decay,
            train.cross_entropy_loss, train.model_inputs, train.predict_logits, train.autocast,
            train.precision,
            data.TokenizedSplit)

# What each artifact kind's build runs, beyond the fields its key already holds.
BUILD_CODE = {
    "data": (data._build_rotten_tomatoes, data.split_by_group),
    "tokens": (data.tokenize_data, data.TokenizedSplit),
    # The pre-trained teacher (its seeded head) is loaded before the build and fine-tuned in it.
    "teacher": (models.load_teacher, models.load_pretrained, models._label_config,
                shared._build_teacher,
                shared.teacher_settings, *TRAINING, evaluation.score, models.save_model),
    "baseline": (pipeline.train_baseline, pipeline.settings_for, pipeline.student_lr,
                 pipeline.baseline_init, pipeline.split_logits, pipeline.new_student,
                 models.load_pretrained, models.build_student, models.student_init,
                 pruning.copy_teacher_weights, pruning.kept,
                 models.resized_config, models.family, models.shape_of,
                 models.teacher_layer_choice,
                 *TRAINING, models.save_model),
    "importance": (shared.prepare_importance, pruning.activation_importance, train.model_inputs,
                   data.TokenizedSplit),
    "transfer": (shared.prepare_transfer, transfer.augmented_copy, transfer.unlabeled_texts,
                 data.TokenizedSplit, train.predict_logits, train.model_inputs, train.autocast,
                 train.precision),
}

# (kind, build version) -> source hash of BUILD_CODE[kind] at that version. Older versions
# stay as the record of when each kind's build changed.
RECORDED = {
    ("data", 1): "966d1fc4d3a3b807",
    ("tokens", 1): "69d416767734665d",
    # sentence pairs (single texts: the same ids); re-recorded for TokenizedSplit.slice and
    # .concatenate, which the tokens build does not call, and for .from_sequences (below)
    ("tokens", 2): "71a4b24a8dd7c7bf",
    # Re-recorded at version 1 for sentence pairs and the family table: a single-text batch
    # reaches the model as before (segment ids only for pairs, which no earlier build saw),
    # and load_teacher's checkpoint loading moved into load_pretrained unchanged.
    ("teacher", 1): "6d7c829bda75f32e",
    ("baseline", 1): "2a4f79dc705abf27",
    ("baseline", 2): "70509a8a02672752",  # families: an embedding width tied to the hidden size follows it
    # bf16 autocast on CPUs with native bf16 (train.precision, also in the keys; re-recorded
    # for a docstring)
    ("teacher", 2): "423e683f0748b8f7",
    ("baseline", 3): "b362570e082b8d0c",
    # Step budgets, dev evaluations, early stops and the best checkpoint (train.TrainSettings;
    # the defaults train as before), schedules in the teacher's key; baselines: the lr rule,
    # teacher-pruned inits and the init actually used in the key.
    # Re-recorded for TokenizedSplit.from_sequences/.tensors (the tokens artifact of the
    # default study rebuilt byte-identical) and teacher-layers and teacher-pruned copying
    # joined in pruning.copy_teacher_weights (the same tensors copied).
    ("teacher", 3): "b7767a5cbf7ad3aa",
    ("baseline", 4): "f876ddeab7b496e2",
    ("importance", 1): "738c876239995420",
    ("transfer", 1): "19e57df2f66a9c8e",
}


def source_hash(code) -> str:
    digest = hashlib.sha256()
    for part in code:
        digest.update(f"{part.__module__}.{part.__qualname__}\n".encode())
        digest.update(inspect.getsource(part).encode())
    return digest.hexdigest()[:16]


def test_every_versioned_kind_lists_its_build_code():
    assert set(BUILD_CODE) == set(BUILD_VERSIONS)


@pytest.mark.parametrize("kind", sorted(BUILD_CODE))
def test_changed_build_code_comes_with_a_new_build_version(kind):
    version, current = BUILD_VERSIONS[kind], source_hash(BUILD_CODE[kind])
    names = ", ".join(f"{part.__module__}.{part.__qualname__}" for part in BUILD_CODE[kind])
    assert RECORDED.get((kind, version)) == current, (
        f"the code that builds {kind!r} artifacts ({names}) is not the code recorded for "
        f"build version {version}, so caches would reuse {kind} artifacts the old code built. "
        f"Bump BUILD_VERSIONS[{kind!r}] in harness/artifacts.py to {version + 1} and add "
        f"({kind!r}, {version + 1}): {current!r} to RECORDED in tests/test_build_versions.py. "
        f"Only a change that cannot alter what is built (a comment, a rename) may instead "
        f"re-record ({kind!r}, {version}).")
