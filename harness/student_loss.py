"""What a student phase minimises, as the training loop's ``loss_fn``: logit KD (the KD loss
``alpha * T^2 * KL + (1 - alpha) * CE`` of ``harness.losses``, from the teacher's cached
logits), hidden-state and attention matching (which run the teacher on each batch), or
labels alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from harness.losses import attention_loss, distillation_loss_terms, hidden_state_loss, layer_map
from harness.models import family
from harness.train import LossFn, cross_entropy_loss, model_inputs


@dataclass(frozen=True)
class StudentLoss:
    """What a student phase minimises: logit KD (None: no logit term) plus weighted
    hidden-state and attention matching; with neither, labels alone (cross-entropy)."""

    logit_kd: LogitKD | None = None
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    # Logit KD from the teacher run on the batch the student reads (online views), not
    # from its cached logits of the training examples.
    teacher_on_batch: bool = False

    @property
    def runs_teacher(self) -> bool:
        """Matching needs the teacher's activations, and online views its logits on each
        batch; otherwise logit KD reads its cached logits."""
        return self.hidden_weight > 0 or self.attention_weight > 0 or self.teacher_on_batch


@dataclass(frozen=True)
class LogitKD:
    alpha: float
    T: float
    T_s: float
    hard_label_temperature: float | None  # None: CE on softmax(z_s / T_s), as the seed


def loss_function(loss: StudentLoss, teacher, projection: torch.nn.Linear | None,
                  teacher_logits: torch.Tensor) -> LossFn:
    """``loss`` as the training loop's ``loss_fn``. Logit KD reads the teacher's logits of
    the training examples (``teacher_logits``, cached: no teacher forward pass); matching
    runs ``teacher`` (fine-tuned) on the batch, and so does logit KD with
    ``loss.teacher_on_batch``, from the logits of that run. Transfer-set examples (label -1)
    have no label: on them logit KD is the KD term alone, T^2 KL(q || p)."""
    if loss.logit_kd is None and not loss.runs_teacher:
        return cross_entropy_loss
    logit_kd = loss.logit_kd

    def loss_fn(model, batch) -> dict[str, torch.Tensor]:
        outputs_wanted = {"output_hidden_states": loss.hidden_weight > 0,
                          "output_attentions": loss.attention_weight > 0}
        output = model(**model_inputs(model, batch), **outputs_wanted)
        if loss.runs_teacher:
            with torch.no_grad():
                teacher_output = teacher(**model_inputs(teacher, batch), **outputs_wanted)
        losses = {}
        if logit_kd is not None:
            targets = (teacher_output.logits.float() if loss.teacher_on_batch
                       else teacher_logits[batch["index"].cpu()].to(output.logits.device))
            losses = logit_losses(logit_kd, output.logits, targets, batch["labels"])
        if loss.hidden_weight > 0 or loss.attention_weight > 0:
            chosen = layer_map(model.config.num_hidden_layers,
                               teacher.config.num_hidden_layers)
            if loss.hidden_weight > 0:  # hidden_states[0] is the embeddings: match layer outputs
                losses["hidden"] = hidden_state_loss(
                    output.hidden_states[1:], [teacher_output.hidden_states[1 + j] for j in chosen],
                    projection, batch["attention_mask"])
            if loss.attention_weight > 0:
                losses["attention"] = attention_loss(
                    output.attentions, [teacher_output.attentions[j] for j in chosen],
                    batch["attention_mask"])
            matching = (loss.hidden_weight * losses.get("hidden", 0.0)
                        + loss.attention_weight * losses.get("attention", 0.0))
            losses["loss"] = losses.get("loss", 0.0) + matching
        return losses

    return loss_fn


def logit_losses(logit_kd: LogitKD, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                 labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The KD loss on labelled examples and the KD term alone on transfer examples
    (label -1), averaged over the batch."""
    labelled = labels >= 0
    if labelled.all():
        return _named(distillation_loss_terms(student_logits, teacher_logits, labels,
                                              logit_kd.alpha, logit_kd.T, logit_kd.T_s,
                                              logit_kd.hard_label_temperature))
    losses, total = {}, 0.0
    for prefix, chosen, alpha in (("", labelled, logit_kd.alpha), ("transfer_", ~labelled, 1.0)):
        if chosen.any():
            part = _named(distillation_loss_terms(
                student_logits[chosen], teacher_logits[chosen], labels[chosen].clamp(min=0),
                alpha, logit_kd.T, logit_kd.T_s, logit_kd.hard_label_temperature))
            total = total + part.pop("loss") * chosen.sum() / len(labels)
            losses.update({prefix + name: value for name, value in part.items()})
    return {"loss": total, **losses}


def _named(terms) -> dict[str, torch.Tensor]:
    return {"loss": terms.total, **{k: v for k, v in (("kd", terms.kd), ("ce", terms.ce))
                                    if v is not None}}


@contextlib.contextmanager
def attention_maps(student, teacher, needed: bool):
    """Eager attention (SDPA returns no attention maps) and no dropout on the student's
    attention probabilities (matching would compare maps with holes), then back.

    The teacher is shared by every trial in the process, so it must leave as it came.
    """
    if not needed:
        yield
        return
    implementations = student.config._attn_implementation, teacher.config._attn_implementation
    rates = attention_dropout_rates(student, family(student.config, "student"))
    saved = [getattr(holder, name) for holder, name in rates]
    student.set_attn_implementation("eager")
    teacher.set_attn_implementation("eager")
    for holder, name in rates:
        setattr(holder, name, 0.0)
    try:
        yield
    finally:
        student.set_attn_implementation(implementations[0])
        teacher.set_attn_implementation(implementations[1])
        for (holder, name), rate in zip(rates, saved):
            setattr(holder, name, rate)


def attention_dropout_rates(model, layout) -> list[tuple[object, str]]:
    """(holder, attribute) of each layer's attention-probability dropout rate: a Dropout's
    ``p`` (BERT's ``attention.self.dropout``, GPT-2's ``attn.attn_dropout``) or the float rate
    the attention function is given (Llama's ``self_attn.attention_dropout``)."""
    rates = []
    for name, module in model.named_modules():
        if not name.endswith(layout.attention_probabilities):
            continue
        if isinstance(module, torch.nn.Dropout):
            rates.append((module, "p"))
        elif isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
            rates.append((module.dropout, "p"))
        elif isinstance(getattr(module, "attention_dropout", None), float):
            rates.append((module, "attention_dropout"))
    return rates
