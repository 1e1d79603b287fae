"""Training on labels alone, the one job behind the teacher's fine-tune and every label-only
baseline: cross-entropy under the phase's settings (its schedule's evaluations on the
select split, stop and kept weights), then the model's logits on the splits it is measured
on, saved with the model into the artifact folder being built (``model/``,
``logits.safetensors``). A teacher used as it is only gets the second half
(``save_with_logits``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from harness.data import TokenizedData
from harness.models import save_model
from harness.train import (BatchViews, PhaseResult, TrainSettings, cross_entropy_loss,
                           predict_logits, select_evaluation, train_phase)


def train_on_labels(name: str, model: torch.nn.Module, text: TokenizedData,
                    settings: TrainSettings, eval_batch_size: int, device: torch.device,
                    splits: tuple[str, ...], folder: Path,
                    views: BatchViews | None = None) -> tuple[PhaseResult, dict]:
    """Train ``model`` (on ``device``) on ``text``'s training split (each batch as ``views``
    makes it, where given); save it and its float32 logits on ``splits`` into ``folder``;
    the phase's result and those logits."""
    model.to(device)
    result = train_phase(name, model, text.tokens["train"], cross_entropy_loss, settings, device,
                         text.pad_id, on_evaluation=select_evaluation(
                             model, text.tokens["select"], settings, eval_batch_size, device,
                             text.pad_id), views=views)
    return result, save_with_logits(model, text, eval_batch_size, device, splits, folder)


def save_with_logits(model: torch.nn.Module, text: TokenizedData, eval_batch_size: int,
                     device: torch.device, splits: tuple[str, ...], folder: Path) -> dict:
    """Save ``model`` (on ``device``) and its float32 logits on ``splits`` into ``folder``;
    the logits."""
    model.to(device)
    logits = {split: predict_logits(model, text.tokens[split], eval_batch_size, device,
                                    text.pad_id) for split in splits}
    save_model(model, text.tokenizer, folder / "model")
    save_file(logits, str(folder / "logits.safetensors"))
    return logits
