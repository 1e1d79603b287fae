"""An artifact's key carries the version of the code that builds it
(``harness.artifacts.BUILD_VERSIONS``), so a changed training loop cannot silently reuse
teachers and baselines the old loop trained. This test makes a change to that code come
with a new version: it hashes the code each kind's build runs and compares it with the hash
recorded below for the kind's current version.

What is hashed: every function and class of ``harness`` that a kind's build functions
name, and every one those name in turn (calls, annotations, module constants), so an
edited callee cannot slip by unlisted; each as its syntax tree without docstrings (comments
are not in it), so a clean-up of words re-records nothing. ``harness.config`` and
``harness.artifacts`` are not followed: the configuration's values are in the keys
themselves, and the artifact format has its own version.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import sys
import textwrap

import pytest

from harness import data, generative, generative_shared, pipeline, shared, student, transfer
from harness.artifacts import BUILD_VERSIONS

NOT_FOLLOWED = ("harness.config", "harness.artifacts")

# Where each artifact kind's build starts; what it runs is found from there.
BUILD_ROOTS = {
    "data": (data._build_rotten_tomatoes,),
    "tokens": (data.tokenize_data,),
    # The pre-trained teacher (its seeded head) is loaded before the build and fine-tuned in it.
    "teacher": (shared.load_teacher, shared._build_teacher),
    "baseline": (student.resolve_student, pipeline.train_baseline),
    "importance": (shared.prepare_importance,),
    "transfer": (shared.prepare_transfer, transfer.unlabeled_texts),
    # A generative teacher: its examples tokenized, loaded, fine-tuned on the targets, scored.
    "lm-teacher": (generative.tokenize_examples, generative_shared.load_generative_lm,
                   generative_shared.decoder_start, generative_shared._build_teacher),
    "lm-top-k": (generative.teacher_top_k, generative.with_targets),
    "lm-pseudo-labels": (generative.greedy_targets,),
}

# (kind, build version) -> hash of the code its build runs. Recorded anew at the versions
# current when this hashing replaced one of hand-listed functions' source text (git history
# has the older record); the default study's tokens, teacher and baselines were rebuilt then
# and came out byte-identical (benchmarks/RESULTS.md).
RECORDED = {
    ("data", 1): "1cc720146e578057",
    # The select split: groups stored with the builtin's rows (data 2), a fourth split
    # tokenized (tokens 3), checkpoints of the teacher and baselines chosen on it (teacher 4,
    # baseline 5); importance's code only reached the new split's name (re-recorded). A
    # baseline's settings then gained ``steps`` (a budget matched to a distillation on a
    # transfer set: in its key, so no old baseline is reused for it) and a phase's budget
    # counts its own split: teacher, baseline and transfer builds unchanged, re-recorded.
    # Then teacher.fine_tune: false (a branch of its own, keyed apart) and the save of a
    # model with its logits split out of train_on_labels: re-recorded.
    # Neighbour replacement in transfer copies: a rule of its own generator, off by
    # default (copies without it are as before; its settings are in the key): re-recorded.
    # teacher.ensemble: K > 1 fine-tunes members on seeds seed + k (keyed apart); K = 1
    # builds the teacher as before: re-recorded.
    # Online views (transfer.online): the training loop's batches pass through them where a
    # phase has them (none for the teacher; a baseline on them has them in its key) and the
    # copies' word-piece replacement moved into a function both use, drawing as before:
    # teacher, baseline and transfer re-recorded.
    # Decoder-only families: a tokenizer without a pad token pads with eos, a config without a
    # pad token id takes the tokenizer's, key-value caches are off, pruning keeps whole
    # key-value groups (one head per group in the encoders: the same slices). Encoder
    # tokenizers and configs all have pad tokens, so their builds are as before: teacher,
    # baseline and importance re-recorded.
    # build_student builds a causal LM's student too (its class an argument, its output
    # layer the teacher's); a classifier's build takes the path it took: baseline
    # re-recorded. The causal-LM teacher and its top-k cache are new kinds.
    ("data", 2): "61864af857e8a496",
    ("tokens", 3): "b362d3238cdd2554",
    ("teacher", 4): "bdd93c87261a148b",
    ("baseline", 5): "afce753c058080ed",
    ("tokens", 2): "35bcfbdd153ba3a0",
    ("teacher", 3): "68879796765a2e96",
    ("baseline", 4): "8d4f2465b73cbcda",
    ("importance", 1): "62350f85253bb5a6",
    ("transfer", 1): "c8a76581b72efeeb",
    ("lm-teacher", 1): "008b81bcf457b74d",
    ("lm-top-k", 1): "54addd89a306517c",
    # Greedy generation pinned (a checkpoint's own generation config ignored), in the
    # training's precision, at most the longest training target: the teacher's scores and
    # generations change (lm-teacher 2). The top-k is taken on the device: the same numbers.
    # A batch's width read in one indexing, the teacher's row starts computed once when
    # attached: the same batches (re-recorded).
    # T5 students (task: seq2seq): copy_teacher_weights maps each stack of layers (a model
    # without a base-model attribute copies from its root), the decoder's inputs built for an
    # encoder-decoder; a classifier and a causal LM take the paths they took (baseline,
    # importance, lm-teacher and lm-top-k re-recorded; a seq2seq teacher has its own key).
    # Sequence-level KD: a phase may group its batches by other lengths than its split's
    # (none passed: its own, as before); the teacher's outputs as targets (with_targets)
    # and their top-k key on the pseudo-labels (teacher, baseline, lm-teacher and lm-top-k
    # re-recorded; lm-pseudo-labels new).
    # A student untied where its teacher is (a no-op for classifiers and tied LMs); the
    # decoder start token checked (baseline and lm-teacher re-recorded).
    # The auto class read off the config (language_model_class), the same class for every
    # family: lm-teacher re-recorded.
    ("lm-teacher", 2): "77595bc363e6afee",
    ("lm-pseudo-labels", 1): "12bbfc256659ce96",
}


def without_docstrings(source: str) -> str:
    """``source`` without docstrings and comments, in one layout: its syntax tree with every
    docstring removed, written back as code."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        first = node.body[0]
        if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def build_code(roots) -> dict[str, str]:
    """Qualified name -> docstring-free code of ``roots`` and of everything of ``harness``
    they reach by name (functions, classes, module constants)."""
    found: dict[str, str] = {}
    pending = list(roots)
    while pending:
        part = pending.pop()
        name = f"{part.__module__}.{part.__qualname__}"
        if name in found:
            continue
        source = inspect.getsource(part)
        found[name] = without_docstrings(source)
        module = sys.modules[part.__module__]
        for node in ast.walk(ast.parse(textwrap.dedent(source))):
            for owner, attribute, value in named(node, module):
                if inspect.isfunction(value) or inspect.isclass(value):
                    if followed(value.__module__):
                        pending.append(value)
                elif isinstance(value, (int, float, str, tuple)) and followed(owner.__name__):
                    found[f"{owner.__name__}.{attribute}"] = repr(value)
    return found


def followed(module_name: str) -> bool:
    return module_name.startswith("harness.") and not module_name.startswith(NOT_FOLLOWED)


def named(node: ast.AST, module):
    """(module, name, value) of what ``node`` names in ``module``: a global, or an attribute
    of an imported module."""
    if isinstance(node, ast.Name) and hasattr(module, node.id):
        yield module, node.id, getattr(module, node.id)
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        owner = getattr(module, node.value.id, None)
        if inspect.ismodule(owner) and hasattr(owner, node.attr):
            yield owner, node.attr, getattr(owner, node.attr)


def code_hash(kind: str) -> str:
    digest = hashlib.sha256()
    for name, code in sorted(build_code(BUILD_ROOTS[kind]).items()):
        digest.update(f"{name}\n{code}\n".encode())
    return digest.hexdigest()[:16]


def test_every_versioned_kind_has_build_roots():
    assert set(BUILD_ROOTS) == set(BUILD_VERSIONS)


@pytest.mark.parametrize("kind", sorted(BUILD_ROOTS))
def test_changed_build_code_comes_with_a_new_build_version(kind):
    version, current = BUILD_VERSIONS[kind], code_hash(kind)
    assert RECORDED.get((kind, version)) == current, (
        f"the code that builds {kind!r} artifacts ({len(build_code(BUILD_ROOTS[kind]))} "
        f"functions, classes and constants of harness, from "
        f"{', '.join(f'{r.__module__}.{r.__qualname__}' for r in BUILD_ROOTS[kind])}) is not the "
        f"code recorded for build version {version}, so caches would reuse {kind} artifacts the "
        f"old code built. Bump BUILD_VERSIONS[{kind!r}] in harness/artifacts.py to "
        f"{version + 1} and add ({kind!r}, {version + 1}): {current!r} to RECORDED in "
        f"tests/test_build_versions.py. Only a change that cannot alter what is built (a "
        f"rename, a move) may instead re-record ({kind!r}, {version}).")


def test_the_callees_of_a_build_are_hashed_without_being_listed():
    baseline = build_code(BUILD_ROOTS["baseline"])
    for callee in ("harness.train._Best", "harness.train.length_grouped_batches",
                   "harness.pruning.copy_teacher_weights", "harness.models.resized_config",
                   "harness.losses.teacher_blocks", "harness.labels.train_on_labels",
                   "harness.student.student_lr", "harness.train.LOG_EVERY_STEPS"):
        assert callee in baseline, callee
    assert "harness.shared.CALIBRATION_EXAMPLES" in build_code(BUILD_ROOTS["importance"])
    assert not any(name.startswith(NOT_FOLLOWED) for name in baseline)


def test_words_do_not_change_the_hash_and_code_does():
    before = '''
def scale(x):
    """Doubles."""
    return 2 * x  # why: twice
'''
    reworded = '''
def scale(x):
    """Twice x, as the width rule asks."""
    # a comment of its own
    return 2 * x
'''
    changed = before.replace("2 * x", "3 * x")
    assert without_docstrings(before) == without_docstrings(reworded)
    assert without_docstrings(before) != without_docstrings(changed)
