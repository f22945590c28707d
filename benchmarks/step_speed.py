"""kdistill's training step against a plain PyTorch step, and each fast-path switch on vs off (issue 15).

For each teacher -> student pair (seed 002's CNN -> MLP on Fashion-MNIST shapes, resnet32x4 -> resnet8x4 and
wrn_40_2 -> wrn_16_2 on CIFAR-100 shapes) the same model objects and the same batch go through

- kdistill's step: ``kdistill.engine.loop.optimisation_step`` on the ``kd`` method (live teacher), and
- a plain step written here: teacher forward under no_grad, CE 0.1 + KL 0.9 * T^2, backward, SGD step,

interleaved (A, B, A, B, ...), after warm-up steps; the result is the median of the paired ratios. The switches
(teacher under inference_mode vs no_grad, channels_last, bf16 autocast, torch.compile) are timed the same way on
kdistill's step. Writes ``benchmarks/results/step_speed.json`` and prints a Markdown table.

    .venv/bin/python benchmarks/step_speed.py --threads 2 --pairs 50 --no-amp --compile   # docs/speed.md (about 25 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from kdistill.config import ModelConfig  # noqa: E402  (after the path set-up above)
from kdistill.contracts import Batch, DataInfo  # noqa: E402
from kdistill.engine.loop import EpochSettings, optimisation_step  # noqa: E402
from kdistill.methods import METHODS  # noqa: E402
from kdistill.models import build_model  # noqa: E402

PAIRS = {
    "cnn -> mlp (Fashion-MNIST)": (
        (1, 28, 28),
        10,
        ModelConfig("cnn", {"channels": [32, 64], "hidden": 512}),
        ModelConfig("mlp", {"hidden": [128]}),
    ),
    "resnet32x4 -> resnet8x4 (CIFAR-100)": ((3, 32, 32), 100, ModelConfig("resnet32x4"), ModelConfig("resnet8x4")),
    "wrn_40_2 -> wrn_16_2 (CIFAR-100)": ((3, 32, 32), 100, ModelConfig("wrn_40_2"), ModelConfig("wrn_16_2")),
}
TEMPERATURE, CE_WEIGHT, KD_WEIGHT = 4.0, 0.1, 0.9


def make_method(pair: str, batch_size: int):
    shape, classes, teacher_config, student_config = PAIRS[pair]
    info = DataInfo(num_classes=classes, input_shape=shape, num_train=batch_size * 10, batch_size=batch_size)
    torch.manual_seed(0)
    teacher = build_model(teacher_config, classes, shape)
    student = build_model(student_config, classes, shape)
    kd = METHODS.get("kd")
    config = kd.config_class(temperature=TEMPERATURE, ce_weight=CE_WEIGHT, kd_weight=KD_WEIGHT)
    method = kd(student, [teacher], config, info)
    method.train()
    generator = torch.Generator().manual_seed(1)
    batch = Batch(
        inputs=torch.randn(batch_size, *shape, generator=generator),
        targets=torch.randint(0, classes, (batch_size,), generator=generator),
        indices=torch.arange(batch_size),
    )
    return method, batch


def kdistill_step(method, batch: Batch, settings: EpochSettings) -> Callable[[], None]:
    parameters = method.trainable_parameters()
    optimizer = torch.optim.SGD(parameters, lr=1e-4, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return lambda: optimisation_step(method, batch, parameters, optimizer, scheduler, settings)


def plain_step(method, batch: Batch) -> Callable[[], None]:
    teacher, student = method.teacher, method.student
    optimizer = torch.optim.SGD(student.parameters(), lr=1e-4, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    def step() -> None:
        with torch.no_grad():
            teacher_logits = teacher(batch.inputs)
        student_logits = student(batch.inputs)
        kl = F.kl_div(
            F.log_softmax(student_logits / TEMPERATURE, 1),
            F.log_softmax(teacher_logits / TEMPERATURE, 1),
            log_target=True,
            reduction="batchmean",
        )
        loss = CE_WEIGHT * F.cross_entropy(student_logits, batch.targets) + KD_WEIGHT * kl * TEMPERATURE**2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    return step


def paired(a: Callable[[], None], b: Callable[[], None], pairs: int, warmup: int = 2) -> dict[str, float]:
    """Median time of a and b and the median of the paired ratios a / b, arms interleaved."""
    for _ in range(warmup):
        a(), b()
    times_a, times_b = [], []
    for index in range(pairs):
        for arm, times in ((a, times_a), (b, times_b)) if index % 2 == 0 else ((b, times_b), (a, times_a)):
            started = time.perf_counter()
            arm()
            times.append(time.perf_counter() - started)
    ratios = [x / y for x, y in zip(times_a, times_b)]
    return {
        "a_median_s": statistics.median(times_a),
        "b_median_s": statistics.median(times_b),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "pairs": pairs,
    }


def teacher_forward(method, batch: Batch, inference: bool) -> Callable[[], None]:
    def forward() -> None:
        with torch.inference_mode() if inference else torch.no_grad():
            method.teacher(batch.inputs)

    return forward


def switches(pair: str, batch_size: int, pairs: int, compile_models: bool, amp: bool) -> dict[str, dict[str, float]]:
    """Each switch on (a) vs off (b) for kdistill's step on ``pair``."""
    results: dict[str, dict[str, float]] = {}
    method, batch = make_method(pair, batch_size)
    results["teacher inference_mode vs no_grad (teacher forward)"] = paired(
        teacher_forward(method, batch, True), teacher_forward(method, batch, False), pairs
    )
    base = kdistill_step(method, batch, EpochSettings())
    if amp:
        amp_on = kdistill_step(method, batch, EpochSettings(amp=True))
        results["bf16 autocast vs fp32 (step)"] = paired(amp_on, base, pairs)
    if batch.inputs.dim() == 4 and pair != next(iter(PAIRS)):
        last, last_batch = make_method(pair, batch_size)
        last = last.to(memory_format=torch.channels_last)
        last_batch = last_batch.to(torch.device("cpu"), channels_last=True)
        results["channels_last vs contiguous (step)"] = paired(
            kdistill_step(last, last_batch, EpochSettings()), base, pairs
        )
    if compile_models:
        compiled, compiled_batch = make_method(pair, batch_size)
        started = time.perf_counter()
        for model in (compiled.student, compiled.teacher):
            model.compile()
        step = kdistill_step(compiled, compiled_batch, EpochSettings())
        step()  # the compilation itself
        results["torch.compile vs eager (step)"] = {
            **paired(step, base, pairs),
            "compile_s": time.perf_counter() - started,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=10, help="interleaved step pairs per comparison")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--switch-pair", default="resnet32x4 -> resnet8x4 (CIFAR-100)", choices=list(PAIRS))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (compiles take minutes)")
    parser.add_argument(
        "--no-amp", action="store_true", help="skip bf16 autocast (without AVX-512 BF16 a CPU bf16 step takes minutes)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/step_speed.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overhead = {}
    for pair in PAIRS:
        method, batch = make_method(pair, args.batch_size)
        overhead[pair] = paired(kdistill_step(method, batch, EpochSettings()), plain_step(method, batch), args.pairs)
        print(f"{pair}: kdistill / plain = {overhead[pair]['ratio_median']:.3f}", flush=True)
    fast = switches(args.switch_pair, args.batch_size, args.pairs, args.compile, not args.no_amp)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "device": "cpu",
        "batch_size": args.batch_size,
    }
    result = {"machine": machine, "step_overhead": overhead, "switches": {args.switch_pair: fast}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print("\n| pair | kdistill step (s) | plain step (s) | median paired ratio | range |\n|---|---|---|---|---|")
    for pair, row in overhead.items():
        print(
            f"| {pair} | {row['a_median_s']:.4f} | {row['b_median_s']:.4f} | {row['ratio_median']:.3f} | "
            f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f} |"
        )
    print(f"\n| switch on {args.switch_pair} | on (s) | off (s) | median paired ratio on/off |\n|---|---|---|---|")
    for name, row in fast.items():
        print(f"| {name} | {row['a_median_s']:.4f} | {row['b_median_s']:.4f} | {row['ratio_median']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
