"""teacher-pruned students: importance scores against a float64 hand computation, and the
student's initial weights as slices of the pre-trained teacher's."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, LlamaConfig

from harness.config import ModelShape
from harness.data import TokenizedSplit
from harness.models import FAMILIES, build_student, shape_of, student_init
from harness.pruning import activation_importance, kept
from tests.families import CONFIGS

VOCAB, PAD_ID = 60, 0


def _teacher(layers: int = 4):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=32, num_labels=2, pad_token_id=PAD_ID,
                        attn_implementation="eager")
    return AutoModelForSequenceClassification.from_config(config).eval()


def _split(n: int = 24, seed: int = 1) -> TokenizedSplit:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 15, (n,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    ids = torch.randint(1, VOCAB, (int(offsets[-1]),), generator=g)
    return TokenizedSplit(ids, offsets, torch.randint(2, (n,), generator=g))


def _hand_importance(teacher, split: TokenizedSplit) -> dict[str, torch.Tensor]:
    """Example by example, unpadded, in float64, from the attention probabilities and the
    layers' own sub-modules rather than hooks."""
    model = _double(teacher)
    heads, width = model.config.num_attention_heads, model.config.hidden_size
    layers = model.bert.encoder.layer
    channels = torch.zeros(width, dtype=torch.float64)
    head_sum = torch.zeros(len(layers), heads, dtype=torch.float64)
    neuron_sum = torch.zeros(len(layers), model.config.intermediate_size, dtype=torch.float64)
    tokens = 0
    with torch.no_grad():
        for i in range(len(split)):
            ids = split.ids[split.offsets[i]:split.offsets[i + 1]][None]
            out = model(input_ids=ids, output_hidden_states=True, output_attentions=True)
            channels += sum(h[0].abs().sum(0) for h in out.hidden_states)
            for index, layer in enumerate(layers):
                x = out.hidden_states[index]
                values = layer.attention.self.value(x)[0].unflatten(-1, (heads, -1))
                context = torch.einsum("hqk,khd->qhd", out.attentions[index][0], values)
                head_sum[index] += context.norm(dim=-1).sum(0)
                attention_output = layer.attention(x)[0]
                neuron_sum[index] += layer.intermediate(attention_output)[0].abs().sum(0)
            tokens += ids.shape[1]
    return {"channels": channels / tokens, "heads": head_sum / tokens,
            "neurons": neuron_sum / tokens}


def _double(model):
    copy = AutoModelForSequenceClassification.from_config(model.config).double().eval()
    copy.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    return copy


def test_importance_matches_a_float64_hand_computation():
    teacher, split = _teacher(), _split()
    scores = activation_importance(teacher, FAMILIES["bert"], split, PAD_ID, seed=0,
                                   examples=len(split), batch_size=5)
    reference = _hand_importance(teacher, split)
    for name in ("channels", "heads", "neurons"):
        assert scores[name].shape == reference[name].shape
        torch.testing.assert_close(scores[name], reference[name], rtol=1e-5, atol=1e-6)


def test_pruned_student_starts_from_slices_of_the_teacher():
    teacher, split = _teacher(layers=4), _split()
    importance = activation_importance(teacher, FAMILIES["bert"], split, PAD_ID, seed=0)
    shape = ModelShape(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=48)
    student, used = build_student(teacher, shape, "teacher-pruned", seed=3, importance=importance)
    assert used == "teacher-pruned"

    ch = kept(importance["channels"], 32)
    assert len(set(ch.tolist())) == 32
    assert set(ch.tolist()) == set(torch.argsort(importance["channels"], descending=True)[:32].tolist())
    t, s = teacher.state_dict(), student.state_dict()
    emb = "bert.embeddings."
    for name in ("word_embeddings.weight", "position_embeddings.weight",
                 "token_type_embeddings.weight"):
        assert torch.equal(s[emb + name], t[emb + name][:, ch])
    for name in ("LayerNorm.weight", "LayerNorm.bias"):
        assert torch.equal(s[emb + name], t[emb + name][ch])
    assert torch.equal(s["bert.pooler.dense.weight"], t["bert.pooler.dense.weight"][ch][:, ch])
    for j, layer in enumerate([0, 2]):  # 2 of 4 teacher layers: every second, from the first
        heads = kept(importance["heads"][layer], 2)
        dims = torch.cat([torch.arange(h * 16, (h + 1) * 16) for h in heads.tolist()])
        neurons = kept(importance["neurons"][layer], 48)
        sp, tp = f"bert.encoder.layer.{j}.", f"bert.encoder.layer.{layer}."
        for proj in ("query", "key", "value"):
            w = f"attention.self.{proj}."
            assert torch.equal(s[sp + w + "weight"], t[tp + w + "weight"][dims][:, ch])
            assert torch.equal(s[sp + w + "bias"], t[tp + w + "bias"][dims])
        w = "attention.output.dense."
        assert torch.equal(s[sp + w + "weight"], t[tp + w + "weight"][ch][:, dims])
        assert torch.equal(s[sp + w + "bias"], t[tp + w + "bias"][ch])
        assert torch.equal(s[sp + "intermediate.dense.weight"],
                           t[tp + "intermediate.dense.weight"][neurons][:, ch])
        assert torch.equal(s[sp + "intermediate.dense.bias"],
                           t[tp + "intermediate.dense.bias"][neurons])
        assert torch.equal(s[sp + "output.dense.weight"],
                           t[tp + "output.dense.weight"][ch][:, neurons])
        for norm in ("attention.output.LayerNorm.weight", "output.LayerNorm.bias"):
            assert torch.equal(s[sp + norm], t[tp + norm][ch])
    # The task head is the student's own, seeded.
    torch.manual_seed(3)
    again, _ = build_student(teacher, shape, "teacher-pruned", seed=3, importance=importance)
    assert torch.equal(again.state_dict()["classifier.weight"], s["classifier.weight"])
    assert s["classifier.weight"].shape == (2, 32)


@pytest.mark.parametrize("asked,shape,expected", [
    ("teacher-pruned", ModelShape(2, 32, 2, 48), "teacher-pruned"),
    ("teacher-pruned", ModelShape(2, 64, 4, 128), "teacher-layers"),  # the teacher's width
    ("teacher-pruned", ModelShape(2, 32, 4, 48), "random"),  # heads 8 wide, the teacher's 16
    ("teacher-pruned", ModelShape(5, 32, 2, 48), "random"),  # deeper than the teacher
    ("teacher-layers", ModelShape(2, 32, 2, 48), "random"),
    ("random", ModelShape(2, 64, 4, 128), "random"),
])
def test_the_init_a_student_gets(asked, shape, expected):
    assert student_init(_teacher().config, shape, asked) == expected


@pytest.mark.parametrize("model_type", sorted(t for t in CONFIGS if not FAMILIES[t].not_prunable))
def test_every_family_prunes_into_slices_of_its_teacher(model_type):
    config = CONFIGS[model_type]()
    config.vocab_size, config.num_labels, config.pad_token_id = VOCAB, 2, PAD_ID
    family = FAMILIES[model_type]
    heads = 1
    if family.key_value_heads:  # two groups of two heads 16 wide: the student keeps one group
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = 4, 2, 16
        heads = 2
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_config(config).eval()
    importance = activation_importance(teacher, family, _split(), PAD_ID, seed=0)
    shape = ModelShape(num_layers=1, hidden_size=32, num_heads=heads, intermediate_size=64)
    student, used = build_student(teacher, shape, "teacher-pruned", seed=0, importance=importance)
    assert used == "teacher-pruned"
    assert shape_of(student.config) == shape
    prefix = f"{teacher.base_model_prefix}."
    layer = f"{prefix}{family.layers}.0."  # 1 of 2 teacher layers: the first
    teacher_state = teacher.state_dict()
    checked = 0
    for name, value in student.state_dict().items():
        if not name.startswith(prefix) or "position_ids" in name:
            continue  # the task head is the student's own
        source = teacher_state[name]
        assert value.numel() < source.numel() or value.shape == source.shape, name
        # Every weight the student starts with is one of the teacher's, at a kept index.
        assert torch.isin(value.flatten(), source.flatten()).all(), name
        checked += name.startswith(layer)
    assert checked >= 9  # Llama: 4 attention and 3 FFN maps, 2 norms, no biases
    batch = _split(4).batch(torch.arange(4), PAD_ID)
    assert student(input_ids=batch["input_ids"],
                   attention_mask=batch["attention_mask"]).logits.shape == (4, 2)


def test_a_grouped_query_student_keeps_whole_key_value_groups():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         intermediate_size=128, num_labels=2, pad_token_id=PAD_ID)
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_config(config).eval()
    importance = activation_importance(teacher, FAMILIES["llama"], _split(), PAD_ID, seed=0)
    # Head 0 scores highest, but group 1 (heads 2 and 3) scores highest together.
    importance["heads"] = torch.tensor([[0.9, 0.1, 0.6, 0.5]], dtype=torch.float64)
    student, used = build_student(teacher, ModelShape(1, 32, 2, 64), "teacher-pruned", seed=0,
                                  importance=importance)
    assert used == "teacher-pruned" and student.config.num_key_value_heads == 1
    assert student.config.head_dim == 16
    channels = kept(importance["channels"], 32)
    group_rows, query_rows = torch.arange(16, 32), torch.arange(32, 64)
    mine, theirs = student.model.layers[0].self_attn, teacher.model.layers[0].self_attn
    for projection, rows in (("q_proj", query_rows), ("k_proj", group_rows),
                             ("v_proj", group_rows)):
        assert torch.equal(getattr(mine, projection).weight,
                           getattr(theirs, projection).weight[rows][:, channels]), projection
    assert torch.equal(mine.o_proj.weight, theirs.o_proj.weight[channels][:, query_rows])
    neurons = kept(importance["neurons"][0], 64)
    for projection in ("gate_proj", "up_proj"):
        assert torch.equal(getattr(student.model.layers[0].mlp, projection).weight,
                           getattr(teacher.model.layers[0].mlp, projection).weight[neurons][
                               :, channels]), projection


def test_a_grouped_query_student_whose_heads_split_no_group_starts_random():
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         intermediate_size=128)
    assert student_init(config, ModelShape(1, 48, 3, 96), "teacher-pruned") == "random"
    assert student_init(config, ModelShape(1, 32, 2, 64), "teacher-pruned") == "teacher-pruned"
