"""bf16 autocast against fp32 on this CPU: one training step (forward, backward, AdamW) of
the default study's students and teacher, side by side in one run.

    python benchmarks/cpu_bf16.py

Prints, per model, the median milliseconds per step of 32 examples x 30 tokens in fp32 and
under bf16 autocast, and their ratio, then whether ``harness.train.precision`` picks bf16
here (it does on CPUs with native bf16, AVX512-BF16 or AMX).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time

import torch

from harness.config import ModelShape, TeacherConfig
from harness.models import build_student, load_teacher, load_tokenizer
from harness.train import precision

STEPS, WARMUP = 12, 2


def ms_per_step(model: torch.nn.Module, bf16: bool) -> float:
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (32, 30), generator=generator)
    labels = torch.randint(0, 2, (32,), generator=generator)
    times = []
    for _ in range(STEPS):
        started = time.perf_counter()
        with (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
              else contextlib.nullcontext()):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times[WARMUP:])


def main() -> None:
    torch.set_num_threads(2)
    teacher = load_teacher(TeacherConfig(), ("rotten", "fresh"), load_tokenizer(TeacherConfig()), 0)
    models = {"teacher 6 x 384": teacher}
    for layers, hidden in ((2, 384), (2, 128), (1, 64)):
        shape = ModelShape(layers, hidden, hidden // 32, 4 * hidden)
        models[f"student {layers} x {hidden}"] = build_student(teacher, shape, "random", 0)[0]
    print(f"{'model':<18} {'fp32 ms/step':>13} {'bf16 ms/step':>13} {'fp32 / bf16':>12}")
    for name, model in models.items():
        fp32, bf16 = ms_per_step(model, False), ms_per_step(model, True)
        print(f"{name:<18} {fp32:>13.1f} {bf16:>13.1f} {fp32 / bf16:>12.2f}")
    print(f"harness.train.precision(cpu) = {precision(torch.device('cpu'))}")


if __name__ == "__main__":
    main()
