"""One training loop for every phase (teacher, baseline, intermediate, distill, fine-tune).

AdamW, linear warm-up then linear decay over a budget of optimiser steps (``epochs`` passes
over the data, never fewer than ``min_steps``: a small dataset still gets enough steps to
learn), evaluations on the select split (``harness.data``: carved from train, so dev
scores each final model once) every ``eval_every`` steps (or every epoch), a stop after
``patience`` evaluations without a better select accuracy and the best checkpoint kept,
gradient clipping, dynamic padding, a progress bar per phase, bf16 autocast where the
hardware computes in bf16 natively (GPUs, CPUs with AVX512-BF16 or AMX), seeded and
reproducible on a given machine. What a phase optimises is the ``loss_fn`` it is given;
the loop knows nothing about distillation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from harness.config import OptimizerConfig
from harness.data import TokenizedSplit
from harness.evaluation import score

LOG_EVERY_STEPS = 10


class Diverged(RuntimeError):
    """A NaN or infinite loss; the study records the trial as failed with reason ``diverged``."""


@dataclass(frozen=True)
class TrainSettings:
    epochs: float
    lr: float
    batch_size: int
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    seed: int
    min_steps: int = 0  # the budget is never fewer optimiser steps than this
    eval_every: int | None = None  # steps between evaluations; None: after every epoch
    patience: int | None = None  # evaluations without a better select accuracy before stopping
    keep_best: bool = False  # end on the weights of the best evaluation
    # The budget in steps where it is not the epochs' (harness.budget.baseline_budget)
    steps: int | None = None

    def total_steps(self, examples: int) -> int:
        """The budget in optimiser steps for a training split of ``examples``."""
        if self.steps is not None:
            return self.steps
        return max(1, self.min_steps, math.ceil(self.epochs * self._steps_per_epoch(examples)))

    def steps_between_evaluations(self, examples: int) -> int:
        return self.eval_every or self._steps_per_epoch(examples)

    def evaluations(self, examples: int) -> int:
        """How many evaluations a phase that runs its whole budget makes."""
        return math.ceil(self.total_steps(examples) / self.steps_between_evaluations(examples))

    def _steps_per_epoch(self, examples: int) -> int:
        return math.ceil(examples / self.batch_size)


def train_settings(optimizer: OptimizerConfig, epochs: float, lr: float,
                   seed: int) -> TrainSettings:
    """A phase's settings: its ``epochs`` and ``lr``, and the optimiser settings of its
    section (``teacher`` for the teacher's fine-tune, ``pipeline`` for every student phase)."""
    return TrainSettings(epochs=epochs, lr=lr, batch_size=optimizer.batch_size,
                         warmup_ratio=optimizer.warmup_ratio,
                         weight_decay=optimizer.weight_decay,
                         max_grad_norm=optimizer.max_grad_norm, seed=seed,
                         **dataclasses.asdict(optimizer.schedule))


@dataclass(frozen=True)
class PhaseResult:
    steps: int
    examples_seen: int
    select_accuracies: tuple[float, ...]  # after each evaluation (each epoch, or eval_every)
    wall_seconds: float
    best_step: int = 0  # the step whose weights the phase ended on


# loss_fn(model, batch) -> {"loss": total, other named components...}
LossFn = Callable[[torch.nn.Module, dict], dict[str, torch.Tensor]]
# views(batch, seed, step) -> the batch the model reads at that step (harness.transfer's
# OnlineViews)
BatchViews = Callable[[dict, int, int], dict]
# on_evaluation(evaluation_number) -> select accuracy; may raise to stop the trial (pruning)
EvaluationHook = Callable[[int], float]
StepLogger = Callable[[dict[str, float], int], None]


def precision(device: torch.device) -> str:
    """"bf16" where matrix products run natively in bf16: GPUs, and CPUs with AVX512-BF16 or
    AMX, where a 2 x 384 student trains 1.5x and the MiniLM teacher 1.6x faster than in
    fp32 (benchmarks/cpu_bf16.py); "fp32" on other CPUs, where bf16 is emulated and slower.
    Results differ between the two, so artifact keys hold it."""
    if device.type == "cuda" or (device.type == "cpu"
                                 and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return "bf16"
    return "fp32"


def autocast(device: torch.device):
    """bf16 autocast where ``precision`` says so; weights and optimiser stay in fp32."""
    if precision(device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_phase(name: str, model: torch.nn.Module, split: TokenizedSplit, loss_fn: LossFn,
                settings: TrainSettings, device: torch.device, pad_id: int,
                extra_parameters: Sequence[torch.nn.Parameter] = (),
                on_evaluation: EvaluationHook | None = None,
                log_step: StepLogger | None = None,
                views: BatchViews | None = None,
                order_by: torch.Tensor | None = None) -> PhaseResult:
    """Train ``model`` for its budget of steps (``TrainSettings.total_steps``) over ``split``,
    each batch as ``views`` makes it where given, batches grouped by ``order_by`` lengths
    (default: the split's own; a split of other targets for the same inputs batched as the
    original is reads the same examples in the same order).

    ``on_evaluation`` (the select evaluation) runs every ``eval_every`` steps, or after every
    epoch, and after the last step; without it there is nothing to stop on or keep."""
    started = time.perf_counter()
    if settings.epochs <= 0:
        return PhaseResult(0, 0, (), 0.0)
    total_steps = settings.total_steps(len(split))
    eval_every = settings.steps_between_evaluations(len(split))
    parameters = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters)
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay,
                                  fused=True)
    scheduler = _warmup_linear_decay(optimizer, round(settings.warmup_ratio * total_steps),
                                     total_steps)
    torch.manual_seed(settings.seed)  # dropout masks
    order = torch.Generator().manual_seed(settings.seed)
    model.train()
    step, examples, accuracies = 0, 0, []
    best = _Best()
    with tqdm(total=total_steps, desc=name, unit="step", leave=False, disable=None) as bar:
        while step < total_steps and not best.stale(settings.patience):
            for indices in length_grouped_batches(split, settings.batch_size, order, order_by):
                batch = split.batch(indices, pad_id)
                if views is not None:
                    batch = views(batch, settings.seed, step)
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast(device):
                    losses = loss_fn(model, batch)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    raise Diverged(f"{name}: loss became {loss.item()} at step {step + 1}")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step, examples = step + 1, examples + len(indices)
                bar.update()
                if log_step is not None and (step % LOG_EVERY_STEPS == 0 or step == total_steps):
                    values = {f"{name}/{k}": float(v.detach()) for k, v in losses.items()}
                    values[f"{name}/lr"] = scheduler.get_last_lr()[0]
                    log_step(values, step)
                if on_evaluation is not None and (step % eval_every == 0 or step == total_steps):
                    accuracies.append(on_evaluation(len(accuracies) + 1))
                    best.update(accuracies[-1], step, model if settings.keep_best else None)
                    bar.set_postfix(select_accuracy=f"{accuracies[-1]:.4f}")
                    model.train()
                if step == total_steps or best.stale(settings.patience):
                    break
    if settings.keep_best and best.weights is not None:
        model.load_state_dict(best.weights)
    model.eval()
    return PhaseResult(step, examples, tuple(accuracies), time.perf_counter() - started,
                       best_step=best.step if settings.keep_best and best.weights else step)


class _Best:
    """The best evaluation so far, its step, its weights (when kept) and how many
    evaluations have passed without beating it."""

    def __init__(self) -> None:
        self.accuracy, self.step, self.weights, self.since = -math.inf, 0, None, 0

    def update(self, accuracy: float, step: int, model: torch.nn.Module | None) -> None:
        if accuracy > self.accuracy:
            self.accuracy, self.step, self.since = accuracy, step, 0
            if model is not None:
                self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.since += 1

    def stale(self, patience: int | None) -> bool:
        return patience is not None and self.since >= patience


def select_evaluation(model, select: TokenizedSplit, settings: TrainSettings,
                      eval_batch_size: int, device: torch.device,
                      pad_id: int) -> EvaluationHook | None:
    """The select-accuracy evaluation a phase with ``settings`` needs to stop early or keep
    its best weights (None where it needs none: a phase without them trains blind)."""
    if settings.patience is None and not settings.keep_best:
        return None
    return lambda _evaluation: accuracy_on(model, select, eval_batch_size, device, pad_id)


def accuracy_on(model, split: TokenizedSplit, eval_batch_size: int, device: torch.device,
                pad_id: int) -> float:
    return score(predict_logits(model, split, eval_batch_size, device, pad_id),
                 split.labels).accuracy


def length_grouped_batches(split: TokenizedSplit, batch_size: int, generator: torch.Generator,
                           lengths: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Shuffled batches of examples of similar length (as transformers' group_by_length),
    ``lengths`` where given, else the split's.

    Random batches are padded to their longest example, which on short-text data wastes
    about a third of the compute; sorting within shuffled windows of 50 batches keeps
    the order random while batches hold similar lengths.
    """
    window = batch_size * 50
    lengths = split.lengths() if lengths is None else lengths
    batches = []
    for chunk in torch.randperm(len(split), generator=generator).split(window):
        by_length = chunk[torch.argsort(lengths[chunk], descending=True, stable=True)]
        batches.extend(by_length.split(batch_size))
    order = torch.randperm(len(batches), generator=generator)
    return [batches[i] for i in order]


def model_inputs(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What ``model`` reads of a batch: token ids, the padding mask and, for sentence pairs,
    segment ids where its family has more than one segment embedding (BERT, ELECTRA; not
    DistilBERT, whose forward has no such argument, nor DeBERTa-v3, which has none)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "token_type_ids" in batch and getattr(model.config, "type_vocab_size", 0) > 1:
        inputs["token_type_ids"] = batch["token_type_ids"]
    return inputs


def cross_entropy_loss(model, batch) -> dict[str, torch.Tensor]:
    """Labels only: the teacher's fine-tune, the student baseline and the fine-tune phase."""
    logits = model(**model_inputs(model, batch)).logits
    return {"loss": torch.nn.functional.cross_entropy(logits.float(), batch["labels"])}


def _warmup_linear_decay(optimizer, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def predict_logits(model: torch.nn.Module, split: TokenizedSplit, batch_size: int,
                   device: torch.device, pad_id: int) -> torch.Tensor:
    """Float32 logits (n, classes) in the split's order.

    Batches are formed over examples sorted by length, so little compute goes to padding.
    """
    was_training = model.training
    model.eval()
    order = torch.argsort(split.lengths(), stable=True)
    chunks = []
    for indices in order.split(batch_size):
        batch = {k: v.to(device) for k, v in split.batch(indices, pad_id).items()}
        with autocast(device):
            logits = model(**model_inputs(model, batch)).logits
        chunks.append(logits.float().cpu())
    logits = torch.empty(len(split), chunks[0].shape[1])
    logits[order] = torch.cat(chunks)
    model.train(was_training)
    return logits
