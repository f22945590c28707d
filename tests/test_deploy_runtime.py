"""The deployment measuring layer (kdistill.deploy.runtime): runtimes, timing, interleaved ratios, ONNX files, int8."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from kdistill.contracts import CheckpointError, ConfigError
from kdistill.deploy import runtime as deploy_runtime
from kdistill.deploy.runtime import (
    Deployable,
    Runtime,
    measure_interleaved,
    onnx_accuracy,
    onnx_file_bytes,
    onnx_parameter_count,
    quantize_static_int8,
    write_onnx,
)
from kdistill.models import count_parameters
from kdistill.runtime.timing import calls_per_sample, median_seconds, seconds

DIGITS_SHAPE = (1, 8, 8)


def tiny_cnn(batch_norm: bool = True) -> nn.Module:
    """Two conv stages on 1x8x8 inputs, 10 classes."""
    norm: list[nn.Module] = [nn.BatchNorm2d(8)] if batch_norm else []
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        *norm,
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 8, 4, 4)
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 16, 2, 2)
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def digits_cnn() -> nn.Module:
    """16 / 32 conv channels and a 64-wide hidden layer on 1x8x8 inputs: 13,706 parameters, so the weights (not the
    graph) make most of the ONNX file."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 16, 4, 4)
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, 32, 2, 2)
        nn.Flatten(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))  # 650 parameters


def wide_mlp() -> nn.Module:
    """About 4.3M parameters (6,600x the tiny MLP): ~8.5M multiply-adds per image against 640."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10)
    )


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_a_runtime_gives_positive_latency_and_throughput_and_torch_logits(runtime, tmp_path):
    torch.manual_seed(0)
    model = tiny_cnn().eval()
    with Deployable.from_module(model, DIGITS_SHAPE, runtime, directory=tmp_path) as deployable:
        assert deployable.latency_ms(batch=1, repeats=5, warmup=1) > 0
        assert deployable.throughput(batch=16, repeats=3, warmup=1) > 0
        inputs = torch.randn(5, *DIGITS_SHAPE)
        with torch.no_grad():
            torch.testing.assert_close(deployable.run(inputs), model(inputs), rtol=1e-4, atol=1e-4)
        assert deployable.parameters == count_parameters(model)
        assert deployable.runtime == Runtime(runtime)
        if runtime == "onnxruntime":
            assert deployable.onnx_path == tmp_path / "model.onnx" and deployable.onnx_path.is_file()
            assert deployable.export is not None and deployable.export.exporter == "legacy"  # the fast one sufficed
            assert deployable.export.max_abs_diff < 1e-4
            assert deployable.file_bytes == deployable.onnx_path.stat().st_size
        else:
            assert deployable.onnx_path is None and deployable.file_bytes is None


@pytest.mark.parametrize("runtime", ["onnxruntime", "torch"])
def test_a_far_bigger_model_measures_slower_in_an_interleaved_comparison(runtime):
    torch.manual_seed(0)
    with (
        Deployable.from_module(tiny_mlp(), DIGITS_SHAPE, runtime) as small,
        Deployable.from_module(wide_mlp(), DIGITS_SHAPE, runtime) as big,
    ):
        latency = measure_interleaved(small, big, "latency_ms", batch=1, repeats=20, warmup=3)
        throughput = measure_interleaved(small, big, "throughput", batch=32, repeats=6, warmup=1)
    # measured ~25x on 2 loaded cores; a median of paired ratios keeps a load burst from flipping it
    assert latency.ratio > 1.5 and latency.b > latency.a
    assert throughput.ratio < 1 / 1.5 and throughput.b < throughput.a
    assert (latency.quantity, latency.batch, latency.pairs) == ("latency_ms", 1, 20)
    assert (throughput.quantity, throughput.batch, throughput.pairs) == ("throughput", 32, 6)


def test_a_fast_call_is_timed_in_blocks_of_at_least_the_minimum_sample_and_a_slow_one_alone():
    calls = []

    def fast() -> None:  # a few microseconds
        calls.append(sum(range(100)))

    def slow() -> None:
        time.sleep(0.003)

    number = calls_per_sample(fast, min_seconds=1e-3)
    assert number > 10 and seconds(fast, number) * number >= 0.5e-3  # a block lasts about the minimum
    assert calls_per_sample(slow, min_seconds=1e-3) == 1
    calls.clear()
    per_call = median_seconds(fast, repeats=4, warmup=2)
    # 2 warm-up calls, calibrating blocks of 1, 2, ..., n calls three times each, then 4 timed blocks of n calls
    assert any(len(calls) == 2 + 3 * (2 * n - 1) + 4 * n for n in (2**k for k in range(4, 14)))
    assert 0 < per_call < 1e-4
    assert 0.003 <= median_seconds(slow, repeats=2, warmup=0) < 0.05


def test_cuda_without_a_gpu_is_refused_naming_the_other_runtimes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA GPU") as refusal:
        Deployable.from_module(tiny_mlp(), DIGITS_SHAPE, "cuda")
    assert "'onnxruntime'" in str(refusal.value) and "'torch'" in str(refusal.value)


def test_an_unknown_runtime_is_refused_with_the_valid_ones():
    with pytest.raises(ConfigError, match="onnxruntime, torch, cuda"):
        Deployable.from_module(tiny_mlp(), DIGITS_SHAPE, "tensorrt")
    with pytest.raises(ConfigError, match="threads must be at least 1"):
        Runtime("torch", threads=0)


def test_bad_measuring_arguments_are_refused(tmp_path):
    with Deployable.from_module(tiny_mlp(), DIGITS_SHAPE, "torch") as deployable:
        with pytest.raises(ConfigError, match="latency_ms, throughput"):
            measure_interleaved(deployable, deployable, "energy")
        with pytest.raises(ConfigError, match="at least 1 repeat"):
            deployable.latency_ms(repeats=0)
        with pytest.raises(ConfigError, match="batch must be at least 1"):
            deployable.throughput(batch=0)
    one, two = (Deployable.from_module(tiny_mlp(), DIGITS_SHAPE, Runtime("torch", threads=n)) for n in (1, 2))
    with pytest.raises(ConfigError, match="different torch thread counts"):
        measure_interleaved(one, two)
    threads = torch.get_num_threads()
    assert one.latency_ms(repeats=2, warmup=0) > 0 and torch.get_num_threads() == threads  # set while timing only
    path = write_onnx(tiny_mlp(), DIGITS_SHAPE, tmp_path / "mlp.onnx").path
    with pytest.raises(ConfigError, match="runs on the 'onnxruntime' runtime"):
        Deployable.from_onnx(path, "torch")
    with pytest.raises(CheckpointError, match="does not exist"):
        Deployable.from_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="unknown ONNX exporter"):
        write_onnx(tiny_mlp(), DIGITS_SHAPE, tmp_path / "x.onnx", exporter="fast")


def test_an_existing_onnx_file_is_measured_with_its_size_and_parameters(tmp_path):
    torch.manual_seed(0)
    model = tiny_cnn(batch_norm=False)
    export = write_onnx(model, DIGITS_SHAPE, tmp_path / "student.onnx")
    with Deployable.from_onnx(export.path) as deployable:
        assert deployable.input_shape == DIGITS_SHAPE  # read from the file
        assert deployable.parameters == count_parameters(model) == onnx_parameter_count(export.path)
        assert deployable.file_bytes == onnx_file_bytes(export.path) == export.path.stat().st_size
        assert deployable.latency_ms(repeats=3, warmup=1) > 0
    assert export.path.is_file()  # a file the caller gave is left in place


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_the_onnx_parameter_count_equals_the_torch_models(exporter, tmp_path):
    torch.manual_seed(0)
    model = tiny_cnn(batch_norm=False)  # a BatchNorm is folded into its convolution at export (see the docstring)
    export = write_onnx(model, DIGITS_SHAPE, tmp_path / "model.onnx", exporter=exporter)
    assert export.exporter == exporter and export.max_abs_diff < 1e-4
    assert onnx_parameter_count(export.path) == count_parameters(model) == 8 * 9 + 8 + 16 * 8 * 9 + 16 + 64 * 10 + 10


def test_export_runs_the_model_in_eval_mode_and_leaves_its_mode_alone(tmp_path):
    torch.manual_seed(0)
    model = tiny_cnn()
    model(torch.randn(32, *DIGITS_SHAPE))  # moves the BatchNorm's running statistics off their start
    model.train()
    export = write_onnx(model, DIGITS_SHAPE, tmp_path / "model.onnx")
    assert model.training and all(module.training for module in model.modules())
    assert export.max_abs_diff < 1e-4  # checked against the eval-mode model: the running statistics were used


def test_auto_export_falls_back_to_dynamo_when_the_fast_export_disagrees(monkeypatch, tmp_path):
    legacy = deploy_runtime._EXPORT["legacy"]

    def wrong_weights(model, example, path):  # a legacy export of another model
        legacy(tiny_mlp(), example, path)

    monkeypatch.setitem(deploy_runtime._EXPORT, "legacy", wrong_weights)
    torch.manual_seed(0)
    export = write_onnx(tiny_mlp(), DIGITS_SHAPE, tmp_path / "model.onnx")
    assert export.exporter == "dynamo" and export.max_abs_diff < 1e-4
    monkeypatch.setitem(deploy_runtime._EXPORT, "dynamo", wrong_weights)
    with pytest.raises(CheckpointError, match="legacy exporter: logits differ.*dynamo exporter: logits differ"):
        write_onnx(tiny_mlp(), DIGITS_SHAPE, tmp_path / "model.onnx")


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`digits_cnn` trained for 4 epochs on scikit-learn digits (80/20 split), and the normalised split."""
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    images = (images - images.mean()) / images.std()
    targets = torch.tensor(digits.target)
    split = int(0.8 * len(images))
    torch.manual_seed(0)
    model = digits_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steps this small take ~0.3 s on one thread, and up to 10x longer on two busy cores
    try:
        for _ in range(4):
            for indices in torch.randperm(split).split(64):
                loss = nn.functional.cross_entropy(model(images[indices]), targets[indices])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), images[:split], targets[:split], images[split:], targets[split:]


def test_int8_quantisation_writes_a_smaller_file_that_keeps_the_accuracy(digits_model, tmp_path):
    model, train_images, _, test_images, test_targets = digits_model
    fp32 = write_onnx(model, DIGITS_SHAPE, tmp_path / "student.onnx").path
    int8 = quantize_static_int8(fp32, train_images[:256], tmp_path / "student_int8.onnx", batch=64)
    assert int8 == tmp_path / "student_int8.onnx" and sorted(p.name for p in tmp_path.iterdir()) == [
        "student.onnx",
        "student_int8.onnx",
    ]  # the staging directory is gone
    assert onnx_file_bytes(int8) < 0.5 * onnx_file_bytes(fp32)  # ~0.4: int8 weights, int32 biases, scales
    assert onnx_parameter_count(int8) == onnx_parameter_count(fp32) == count_parameters(model)

    accuracy_fp32, logits_fp32 = onnx_accuracy(fp32, test_images, test_targets, batch=100)
    accuracy_int8, logits_int8 = onnx_accuracy(int8, test_images.numpy(), test_targets.numpy(), batch=100)
    with torch.no_grad():
        torch_logits = model(test_images)
    torch.testing.assert_close(logits_fp32, torch_logits, rtol=1e-4, atol=1e-4)
    assert accuracy_fp32 > 85.0  # the student learned
    assert abs(accuracy_int8 - accuracy_fp32) < 3.0
    agreement = (logits_int8.argmax(1) == logits_fp32.argmax(1)).float().mean().item()
    assert agreement > 0.95 and logits_int8.shape == (len(test_images), 10)
    with Deployable.from_onnx(int8) as quantised:  # and it is measured like any other file
        assert quantised.latency_ms(repeats=3, warmup=1) > 0


def test_quantisation_and_accuracy_refuse_bad_inputs(tmp_path):
    fp32 = write_onnx(tiny_mlp(), DIGITS_SHAPE, tmp_path / "mlp.onnx").path
    with pytest.raises(ConfigError, match=r"\(N, C, H, W\)"):
        quantize_static_int8(fp32, np.zeros((4, 64), dtype=np.float32), tmp_path / "int8.onnx")
    with pytest.raises(ConfigError, match="is the fp32 model itself"):
        quantize_static_int8(fp32, torch.zeros(4, *DIGITS_SHAPE), fp32)
    with pytest.raises(ConfigError, match="3 images but 2 targets"):
        onnx_accuracy(fp32, torch.zeros(3, *DIGITS_SHAPE), torch.zeros(2, dtype=torch.long))
