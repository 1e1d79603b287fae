"""harness.student: each phase's learning rate under pipeline.lr_rule, and the student a
trial resolves to (its shape, init and baseline's init) on the smoke study's teacher
(2 layers, width 64, 2 heads of 32, FFN 128). Nothing here builds a model."""

from __future__ import annotations

import pytest

from harness.config import ModelShape, default_trial_config
from harness.student import BASELINE, LearningRates, resolve_student, student_lr
from harness.study_file import load_study_config

from .conftest import SMOKE

TEACHER_WIDTH = 64  # smoke.yaml's teacher.architecture.hidden_size


@pytest.mark.parametrize("init, hidden_size, teacher_width, expected", [
    ("teacher-layers", 128, 384, 3e-4),  # 1e-4 * 384 / 128
    ("teacher-pruned", 192, 384, 2e-4),
    ("pretrained", 256, 768, 3e-4),
    ("random", 128, 384, 6e-4),  # twice: from random weights
    ("random", 384, 384, 2e-4),
    ("teacher-layers", 384, 384, 1e-4),  # the teacher's width: the rate as given
])
def test_width_rule_scales_by_teacher_width_over_student_width(init, hidden_size, teacher_width,
                                                               expected):
    width = load_study_config(SMOKE, ["pipeline.lr_rule=width"])
    assert student_lr(width, 1e-4, init, hidden_size, teacher_width) == pytest.approx(
        expected, rel=1e-12)
    fixed = load_study_config(SMOKE, ["pipeline.lr_rule=fixed"])
    assert student_lr(fixed, 1e-4, init, hidden_size, teacher_width) == 1e-4


def rates(study_config, baseline_factor: float, factor: float) -> LearningRates:
    """The study file's rates, the baseline's scaled by ``baseline_factor`` and the
    distilled arm's phases by ``factor``."""
    pipeline = study_config.pipeline
    return LearningRates(baseline=pipeline.baseline.lr * baseline_factor,
                         intermediate=pipeline.intermediate.lr * factor,
                         distill=pipeline.distill.lr * factor,
                         finetune=pipeline.finetune.lr * factor)


def assert_rates(got: LearningRates, expected: LearningRates) -> None:
    for phase in ("baseline", "intermediate", "distill", "finetune"):
        assert getattr(got, phase) == pytest.approx(getattr(expected, phase), rel=1e-12), phase


# With head_dim 32 (the teacher's head width). Factors under lr_rule width: 64 / width, and
# x2 where the weights start random. "teacher-layers" needs the teacher's width and heads;
# "teacher-pruned" a narrower student with whole heads; "baseline" starts the distilled arm
# from a baseline begun from the teacher's layers where they fit.
@pytest.mark.parametrize(("init", "hidden_size", "student_init", "baseline_init",
                          "baseline_factor", "factor"), [
    ("random", 64, "random", "random", 2.0, 2.0),
    ("random", 32, "random", "random", 4.0, 4.0),
    ("teacher-layers", 64, "teacher-layers", "teacher-layers", 1.0, 1.0),
    ("teacher-layers", 32, "random", "random", 4.0, 4.0),  # too narrow: falls back
    ("teacher-pruned", 64, "teacher-layers", "teacher-layers", 1.0, 1.0),  # nothing to prune
    ("teacher-pruned", 32, "teacher-pruned", "teacher-pruned", 2.0, 2.0),
    ("baseline", 64, BASELINE, "teacher-layers", 1.0, 1.0),
    ("baseline", 32, BASELINE, "random", 4.0, 4.0),  # the arm is scaled for the baseline's start
])
def test_resolved_init_and_each_phases_rate(smoke_shared, init, hidden_size, student_init,
                                            baseline_init, baseline_factor, factor):
    for rule in ("width", "fixed"):
        study_config = load_study_config(SMOKE, ["student.head_dim=32", f"pipeline.lr_rule={rule}"])
        trial_config = default_trial_config(study_config, num_layers=2, hidden_size=hidden_size,
                                            init=init)
        student = resolve_student(study_config, trial_config, smoke_shared)
        assert (student.init, student.baseline_init) == (student_init, baseline_init)
        expected = (rates(study_config, baseline_factor, factor) if rule == "width"
                    else rates(study_config, 1.0, 1.0))
        assert_rates(student.lr, expected)


def test_more_layers_than_the_teacher_start_random(smoke_shared):
    study_config = load_study_config(SMOKE, ["student.head_dim=32", "pipeline.lr_rule=width"])
    for init in ("teacher-layers", "teacher-pruned", "baseline"):
        student = resolve_student(study_config, default_trial_config(
            study_config, num_layers=3, hidden_size=TEACHER_WIDTH, init=init), smoke_shared)
        assert student.baseline_init == "random", init
        assert student.init == (BASELINE if init == "baseline" else "random")
        assert_rates(student.lr, rates(study_config, 2.0, 2.0))


@pytest.mark.parametrize("rule", ["width", "fixed"])
def test_a_searched_lr_is_used_as_sampled(smoke_shared, rule):
    study_config = load_study_config(SMOKE, [f"pipeline.lr_rule={rule}",
                                             "search.lr={low: 1.0e-4, high: 1.0e-2, log: true}"])
    trial_config = default_trial_config(study_config, hidden_size=32, lr=3.0e-3)  # random init
    student = resolve_student(study_config, trial_config, smoke_shared)
    assert student.lr.distill == 3.0e-3
    others = rates(study_config, *((4.0, 4.0) if rule == "width" else (1.0, 1.0)))
    assert_rates(student.lr, LearningRates(others.baseline, others.intermediate, 3.0e-3,
                                           others.finetune))


@pytest.mark.parametrize("num_layers, hidden_size, intermediate_size, shape", [
    (1, 32, None, ModelShape(1, 32, 2, 64)),  # heads: 32 / head_dim 16; FFN: teacher's 2x
    (2, 64, None, ModelShape(2, 64, 4, 128)),
    (3, 48, None, ModelShape(3, 48, 3, 96)),
    (2, 32, 48, ModelShape(2, 32, 2, 48)),  # an FFN width the trial sets
])
def test_resized_teacher_shape(smoke_config, smoke_shared, num_layers, hidden_size,
                               intermediate_size, shape):
    trial_config = default_trial_config(smoke_config, num_layers=num_layers,
                                        hidden_size=hidden_size,
                                        intermediate_size=intermediate_size, seed=7)
    student = resolve_student(smoke_config, trial_config, smoke_shared)
    assert student.shape == shape
    assert student.pretrained is None and student.text is smoke_shared.text
    assert student.teacher is smoke_shared.pretrained_teacher and student.seed == 7
    assert student.label_names == smoke_shared.data.label_names
