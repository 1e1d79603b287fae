"""Generative examples for an encoder-decoder (T5): the prompt encoded and the target
decoded as transformers shifts it, greedy generation, FLOPs per generated token, students
taking both stacks' layers, and a trial on the reversal task (a teacher trained first)."""

from __future__ import annotations

import copy

import pytest
import sacrebleu
import torch
import transformers

from harness.compute import count_generated_token_flops, measure_compute
from harness.config import ModelShape
from harness.generative import (IGNORE, GenerativeData, bleu, greedy_targets, score_generative,
                                target_logits, teacher_top_k, tokenize_examples)
from harness.generative_trial import GenerativeLoss, distil_generative, fine_tune_teacher
from harness.generative_shared import decoder_start
from harness.models import ModelError, build_student
from harness.study import main
from harness.study_file import study_config_from_dict

from .conftest import SMOKE
from .generative_task import digit_tokenizer, reversal_examples, tiny_t5
from .test_generative_trial import settings

CPU = torch.device("cpu")
START = 0  # tiny_t5's decoder_start_token_id, T5's: the pad token


def split_of(prompts, targets):
    return tokenize_examples(digit_tokenizer(), prompts, targets, 16, decoder_start_id=START)


def test_the_prompt_is_encoded_and_the_target_decoded_as_transformers_shifts_it():
    prompts, targets = reversal_examples(5, seed=0)
    prompts[1], targets[3] = "7 =", "9"  # padding in the encoder and in the decoder
    split = split_of(prompts, targets)
    batch = split.batch(torch.arange(5), pad_id=0)
    tokenizer = digit_tokenizer()
    for row, (prompt, target) in enumerate(zip(prompts, targets)):
        prompt_ids = tokenizer(prompt)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [1]
        assert batch["input_ids"][row, :len(prompt_ids)].tolist() == prompt_ids
        assert batch["attention_mask"][row].sum() == len(prompt_ids)
        assert batch["labels"][row, :len(target_ids)].tolist() == target_ids
        assert (batch["labels"][row, len(target_ids):] == IGNORE).all()
        assert (batch["decoder_input_ids"][row, :len(target_ids)].tolist()
                == [START, *target_ids[:-1]])
    model = tiny_t5(1, 32, 2).eval()
    logits, labelled = target_logits(model, batch)
    # transformers builds the decoder's inputs from the labels itself (shift_tokens_right).
    reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      labels=batch["labels"]).logits
    where = batch["labels"] != IGNORE
    torch.testing.assert_close(logits, reference[where], rtol=0, atol=1e-6)
    assert labelled.tolist() == batch["labels"][where].tolist()
    assert len(labelled) == int(split.target_lengths().sum())


def test_batched_greedy_generation_equals_one_prompt_at_a_time_and_an_argmax_loop():
    prompts, targets = reversal_examples(6, seed=1)
    prompts[2] = "7 ="  # left padding in its batch
    model = tiny_t5(2, 32, 2, seed=3).eval()
    together = greedy_targets(model, split_of(prompts, targets), 6, CPU, 0, 1, 5)
    alone = [greedy_targets(model, split_of([p], [t]), 1, CPU, 0, 1, 5)[0]
             for p, t in zip(prompts, targets)]
    assert together == alone
    tokenizer = digit_tokenizer()
    for prompt, generated in zip(prompts, together):
        input_ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        decoded = [START]
        with torch.no_grad():
            while len(decoded) <= 5 and decoded[-1] != 1:  # 5 new tokens at most, or eos
                logits = model(input_ids=input_ids,
                               decoder_input_ids=torch.tensor([decoded])).logits
                decoded.append(int(logits[0, -1].argmax()))
        written = decoded[1:]
        assert generated == (written[:written.index(1)] if 1 in written else written)


def test_a_t5_student_takes_every_kth_block_of_both_stacks_and_the_output_layer(tmp_path):
    teacher = tiny_t5(4, 32, 2, seed=1)
    # A T5 v1.1 / Flan-T5 checkpoint loads with its own output layer; transformers 5 ties the
    # one of any model built from a config.
    teacher.lm_head.weight = torch.nn.Parameter(torch.randn_like(teacher.lm_head.weight))
    student, used = build_student(teacher, ModelShape(2, 32, 2, 128), "teacher-layers", seed=0,
                                  auto_class=transformers.AutoModelForSeq2SeqLM)
    assert used == "teacher-layers"
    assert (student.config.num_layers, student.config.num_decoder_layers) == (2, 2)
    ours, theirs = student.state_dict(), teacher.state_dict()
    for name, value in ours.items():
        source = name
        for stack in ("encoder.block.", "decoder.block."):
            if name.startswith(stack):
                index, rest = name[len(stack):].split(".", 1)
                source = f"{stack}{[0, 2][int(index)]}.{rest}"
        assert torch.equal(value, theirs[source]), name
    assert "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in ours
    assert student.lm_head.weight is not student.shared.weight  # untied, as its teacher
    student.save_pretrained(tmp_path)
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert all(torch.equal(value, again.state_dict()[name]) for name, value in ours.items())
    tied, _ = build_student(tiny_t5(4, 32, 2), ModelShape(2, 32, 2, 128), "random", seed=0,
                            auto_class=transformers.AutoModelForSeq2SeqLM)
    assert tied.lm_head.weight is tied.shared.weight  # a tied teacher's student is tied
    # A decoder shallower than the student's depth has no layers to give it.
    shallow = tiny_t5(4, 32, 2)
    shallow.config.num_decoder_layers = 1
    assert build_student(shallow, ModelShape(2, 32, 2, 128), "teacher-layers", seed=0,
                         auto_class=transformers.AutoModelForSeq2SeqLM)[1] == "random"


@pytest.mark.parametrize("prompt_len", [5, 13])
def test_flops_per_generated_token_are_one_decoder_step_over_the_encoded_prompt(prompt_len):
    layers, d, vocab = 2, 32, 14
    model = tiny_t5(layers, d, 2)
    cached = 2  # the start token and this one
    per_layer = (2 * 4 * d * d + 2 * 2 * cached * d  # self-attention: projections, QK and AV
                 + 2 * 2 * d * d + 2 * 2 * prompt_len * d  # cross: query and output, QK and AV
                 + 3 * 2 * d * 4 * d)  # the gated FFN
    assert (count_generated_token_flops(model, prompt_len, CPU)
            == layers * per_layer + 2 * d * vocab)
    # A whole example: the prompt encoded, the target decoded.
    assert (measure_compute(model, prompt_len, CPU, 2, decoder_len=5).flops_per_example
            > measure_compute(model, prompt_len, CPU, 2, decoder_len=1).flops_per_example)
    with pytest.raises(ValueError, match="decoder_len"):
        measure_compute(model, prompt_len, CPU, 2)


def test_bleu_is_sacrebleus_corpus_score_of_the_decoded_texts():
    prompts, targets = reversal_examples(4, seed=2)
    split = split_of(prompts, targets)
    tokenizer = digit_tokenizer()
    right = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in targets]
    assert bleu(tokenizer, right, split) == pytest.approx(100.0)
    written = [right[0], right[1][:2], [], right[3][::-1]]
    hypotheses = [tokenizer.decode(tokens) for tokens in written]
    assert bleu(tokenizer, written, split) == pytest.approx(
        sacrebleu.corpus_bleu(hypotheses, [list(targets)]).score)


@pytest.fixture(scope="module")
def trained():
    splits = [split_of(*reversal_examples(n, seed)) for n, seed in
              ((1500, 0), (100, 1), (200, 2), (200, 3))]
    data = GenerativeData(*splits, pad_id=0, eos_id=1)
    untrained = tiny_t5(2, 64, 4)
    teacher = copy.deepcopy(untrained)
    fine_tune_teacher(teacher, data, settings(12, seed=0), CPU)
    top = teacher_top_k(teacher, data.train, k=4, batch_size=64, device=CPU, pad_id=0)
    result, student = distil_generative(untrained, data.train.with_teacher(top), data,
                                        ModelShape(1, 64, 4, 256), "teacher-layers",
                                        GenerativeLoss(0.8, 2.0, 2.0), settings(12, seed=1),
                                        settings(12, seed=1), CPU)
    return data, teacher, result, student


@pytest.mark.slow
def test_a_distilled_t5_student_writes_the_reversal_and_reloads_to_the_same_generations(
        trained, tmp_path):
    data, teacher, result, student = trained
    teacher_scores, _ = score_generative(teacher, data.dev, 64, CPU, 0, 1, data.max_new_tokens)
    assert teacher_scores.exact_match > 0.9
    # Four digits written blind match by chance once in 10^4: the student reads its prompt.
    assert result.student.scores["dev"].exact_match > 0.5
    assert result.init == "teacher-layers"
    assert result.student.phase.steps == result.baseline.phase.steps
    student.save_pretrained(tmp_path)
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert greedy_targets(again, data.dev, 64, CPU, 0, 1, data.max_new_tokens) == \
        result.student.generations["dev"]


def test_a_t5_teacher_is_refused_for_a_classification_study_before_training(tmp_path, capsys):
    folder = tmp_path / "t5"
    tiny_t5(1, 32, 2).save_pretrained(folder)
    digit_tokenizer().save_pretrained(folder)
    journal = tmp_path / "refused.journal"
    assert main(["--study", str(SMOKE), "--set", f"teacher.source={folder}", "--n-trials", "1",
                 "--storage", f"journal:{journal}"]) == 2
    assert "is an encoder-decoder, for task: seq2seq" in capsys.readouterr().err
    assert not journal.exists()


def test_a_t5_teacher_whose_heads_do_not_split_its_width_cannot_give_students_its_layers():
    narrow = tiny_t5(1, 32, 2)  # d_kv 16
    narrow.config.d_kv = 8  # 2 heads of 8 in a width of 32, as flan-t5-small's 6 of 64 in 512
    layers = study_config_from_dict({"task": "seq2seq", "student": {"init": "teacher-layers"}})
    with pytest.raises(ModelError, match="student.init: teacher-layers needs"):
        decoder_start(narrow, layers)
    assert decoder_start(narrow, study_config_from_dict(
        {"task": "seq2seq", "student": {"init": "random"}})) == START
    assert decoder_start(tiny_t5(1, 32, 2), layers) == START
    narrow.config.decoder_start_token_id = None
    with pytest.raises(ModelError, match="decoder_start_token_id"):
        decoder_start(narrow, layers)
