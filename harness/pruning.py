"""``student.init: teacher-pruned``: a student narrower (or shallower) than the teacher starts
from the teacher's most important weights, as in structured width pruning followed by
distillation (Minitron, Muralidharan et al. 2024), which beats training the small model from
scratch.

The student takes the layers ``teacher-layers`` would take; within them it keeps the
embedding channels, attention heads and FFN neurons with the largest mean activation
magnitude of the pre-trained teacher (as loaded, before fine-tuning: a label-only baseline
must carry no fine-tuned knowledge) on a calibration sample of the training split:

- a channel: mean |hidden state| over real tokens, summed over the embedding output and
  every layer's output (the LayerNorm outputs every layer reads);
- a head: mean over real tokens of the L2 norm of its output (what the head-merge
  projection reads);
- an FFN neuron: mean |activation| over real tokens (what the down projection reads).

Transformers prunes whole heads (``prune_heads``) but not channels or neurons, and ranks
nothing, hence this module. The scores are a cached artifact (``harness.shared``).
"""

from __future__ import annotations

import torch

from harness.data import TokenizedSplit
from harness.train import model_inputs

CALIBRATION_EXAMPLES = 512


@torch.no_grad()
def activation_importance(teacher, family, split: TokenizedSplit, pad_id: int, seed: int,
                          examples: int = CALIBRATION_EXAMPLES,
                          batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``{"channels": (hidden,), "heads": (layers, heads), "neurons": (layers, ffn)}``
    float64 scores of ``teacher`` (any family in ``harness.models.FAMILIES``) on a seeded
    sample of ``split``."""
    chosen = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:examples]
    layers = _layers(teacher, family)
    num_heads = teacher.config.num_attention_heads
    sums = {"heads": [0.0] * len(layers), "neurons": [0.0] * len(layers)}
    mask = {}  # the current batch's real-token mask, read by the hooks

    def head_scores(index):
        def hook(_module, args):
            x = args[0].double()
            per_head = x.unflatten(-1, (num_heads, -1)).norm(dim=-1)  # (batch, tokens, heads)
            sums["heads"][index] = sums["heads"][index] + per_head[mask["real"]].sum(0)
        return hook

    def neuron_scores(index):
        def hook(_module, args):
            x = args[0].double().abs()
            sums["neurons"][index] = sums["neurons"][index] + x[mask["real"]].sum(0)
        return hook

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.get_submodule(family.head_merge)
                       .register_forward_pre_hook(head_scores(index)))
        handles.append(layer.get_submodule(family.ffn_down)
                       .register_forward_pre_hook(neuron_scores(index)))
    was_training = teacher.training
    teacher.eval()
    channels, tokens = 0.0, 0
    try:
        for indices in chosen.split(batch_size):
            batch = split.batch(indices, pad_id)
            mask["real"] = batch["attention_mask"].bool()
            hidden = teacher(**model_inputs(teacher, batch), output_hidden_states=True).hidden_states
            channels = channels + sum(h.double().abs()[mask["real"]].sum(0) for h in hidden)
            tokens += int(mask["real"].sum())
    finally:
        for handle in handles:
            handle.remove()
        teacher.train(was_training)
    return {"channels": channels / tokens,
            "heads": torch.stack(sums["heads"]) / tokens,
            "neurons": torch.stack(sums["neurons"]) / tokens}


def kept(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` highest-scoring indices, in their original order."""
    return torch.sort(torch.topk(scores, count).indices).values


def copy_teacher_weights(teacher, student, family, chosen_layers: dict[str, list[int]],
                         importance: dict[str, torch.Tensor] | None = None,
                         group: int = 1) -> None:
    """Fill ``student`` (built at its shape from the teacher's config) with the teacher's
    weights: layer j of each stack of layers (``family.layers``, and an encoder-decoder's
    ``family.decoder_layers``) is layer ``chosen_layers[stack][j]`` of the teacher's. Without
    ``importance`` every tensor is copied whole (teacher-layers: the widths must match); with
    it, sliced to the kept heads and neurons of each layer and the kept channels everywhere
    (teacher-pruned). With grouped-query attention whole groups are kept: the key-value
    heads whose ``group`` query heads score highest together, with all of them. A task head
    outside the base model (a classifier's, a causal LM's output layer) stays the student's
    own; a model that is its own base (T5's generator) has its output layer copied too."""
    hidden = teacher.config.hidden_size
    head_width = hidden // teacher.config.num_attention_heads
    student_config = student.config
    pruned = importance is not None
    channels = kept(importance["channels"], student_config.hidden_size) if pruned else None
    # A task model holds its base model under base_model_prefix; T5's generator is its own.
    prefix = (f"{teacher.base_model_prefix}." if hasattr(teacher, teacher.base_model_prefix)
              else "")
    stacks = {f"{prefix}{stack}.": layers for stack, layers in chosen_layers.items()}
    for layer_prefix in stacks:
        if not any(name.startswith(layer_prefix) for name in student.state_dict()):
            raise ValueError(f"cannot copy teacher layers: no parameters under {layer_prefix!r}")
    attention = (*family.head_projections, *family.group_projections, family.head_merge)
    teacher_state = teacher.state_dict()
    new_state = {}
    for name, own in student.state_dict().items():
        if not name.startswith(prefix):
            new_state[name] = own  # the task head
            continue
        module = name.rsplit(".", 1)[0]
        roles = {}  # dimension -> the indices it keeps
        source = name
        layer_prefix = next((stack for stack in stacks if name.startswith(stack)), None)
        if layer_prefix is not None:
            index, module = module[len(layer_prefix):].split(".", 1)
            layer = stacks[layer_prefix][int(index)]
            source = f"{layer_prefix}{layer}.{name[len(layer_prefix):].split('.', 1)[1]}"
            if pruned and module in attention:
                groups = kept(importance["heads"][layer].unflatten(0, (-1, group)).sum(-1),
                              student_config.num_attention_heads // group)
                heads = groups if module in family.group_projections else (
                    groups[:, None] * group + torch.arange(group)).flatten()
                head_dims = (heads[:, None] * head_width + torch.arange(head_width)).flatten()
                roles[1 if module == family.head_merge else 0] = head_dims
            elif pruned and module in (*family.ffn_up, family.ffn_down):
                neurons = kept(importance["neurons"][layer],
                               getattr(student_config, family.intermediate_size))
                roles[1 if module == family.ffn_down else 0] = neurons
        weight = teacher_state[source]
        for dim in range(weight.dim()):
            if weight.shape[dim] == own.shape[dim]:
                continue
            indices = roles.get(dim)
            if indices is None:
                if not pruned or weight.shape[dim] != hidden:
                    raise ValueError(f"cannot copy {source} into {name}: dimension {dim} is "
                                     f"{weight.shape[dim]} in the teacher, {own.shape[dim]} in "
                                     "the student, and not one the family table prunes")
                indices = channels
            weight = weight.index_select(dim, indices)
        new_state[name] = weight.clone()
    student.load_state_dict(new_state)


def _layers(model, family) -> torch.nn.ModuleList:
    return model.get_submodule(f"{model.base_model_prefix}.{family.layers}")
