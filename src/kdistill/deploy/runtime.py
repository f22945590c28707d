"""Measuring a model as it is deployed: latency and throughput on a runtime, file size, parameters, int8.

The measuring layer of ``kdistill compress`` (a budget such as "at most 0.2x the teacher's batch-1 latency on ONNX
Runtime CPU"). A :class:`Deployable` is a model turned once into what a :class:`Runtime` runs, then timed:

- ``onnxruntime``: the model exported to ONNX (:func:`write_onnx`, into a given or a temporary directory) and an
  ``onnxruntime.InferenceSession`` on the CPU execution provider with ``torch.get_num_threads()`` intra-op threads
  (or ``Runtime.threads``); also an existing ``.onnx`` file (:meth:`Deployable.from_onnx`);
- ``torch``: a frozen copy of the model, eager on the CPU under ``torch.inference_mode``;
- ``cuda``: the same on a CUDA GPU, ``torch.cuda.synchronize`` closing every timed call.

Timing is warm-up calls, then the median of repeated samples on a fixed random batch, a sample being a block of calls
lasting at least a millisecond (:func:`kdistill.runtime.timing.median_seconds`, the timer ``kdistill compare`` uses
too). A relative budget is checked with :func:`measure_interleaved`: the two models are timed alternately (a, b, b,
a, ...) and the median of the paired ratios b / a is taken, so a burst of load on a shared machine hits both sides of
a pair.

Export speed. The search screens tens of candidates, so :func:`write_onnx` uses the faster exporter that gives a
correct model: the TorchScript-based one (``torch.onnx.export(dynamo=False)``, deprecated but working in torch 2.14.1),
checked against torch (logits within 1e-4 at another batch size than the one exported, so a batch size baked into
the graph is caught), falling back to the ``torch.export``-based one (``dynamo=True``, the settings of
``kdistill export``) when it fails or disagrees. Seconds per export, measured with :func:`write_onnx` (the export
alone), median (min) of 5 alternating exports after one untimed pair, torch 2.14.1, on 2 CPU cores shared with
other jobs (load average ~4); every file within 3e-6 of torch:

| model (input)                             | dynamo=True | dynamo=False |
|-------------------------------------------|-------------|--------------|
| CNN 16/32 channels + BatchNorm (1x28x28)  | 1.47 (1.10) | 0.11 (0.03)  |
| MLP 784-512-256-10 (1x28x28)              | 1.02 (0.97) | 0.04 (0.03)  |
| zoo resnet20, 100 classes (3x32x32)       | 2.89 (2.61) | 0.80 (0.11)  |
| zoo mobilenetv2, 100 classes (3x32x32)    | 5.31 (3.48) | 1.19 (0.86)  |

The two files of one model ran at batch 1 on ONNX Runtime within 0.83x-1.01x of each other (legacy / dynamo,
interleaved, the MLP furthest apart): screen with the fast export, and check the final budget on the file
``kdistill export`` wrote (:meth:`Deployable.from_onnx`).

Parameters of an ONNX file are the elements of its initializers (:func:`onnx_parameter_count`). int8:
:func:`quantize_static_int8` (ONNX Runtime static quantisation, QDQ, per-channel weights, calibrated on images) and
:func:`onnx_accuracy` to see what it cost.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from kdistill.contracts import CheckpointError, ConfigError
from kdistill.deploy.export import onnx_program
from kdistill.models import count_parameters
from kdistill.runtime.timing import TimedCall, calls_per_sample, check_counts, median_seconds, seconds

RUNTIMES = {
    "onnxruntime": "ONNX Runtime, CPU execution provider, on the model exported to ONNX once",
    "torch": "PyTorch eager on the CPU under torch.inference_mode",
    "cuda": "PyTorch eager on a CUDA GPU, synchronised after every timed call",
}
EXPORTERS = ("auto", "legacy", "dynamo")  # auto: legacy (fast), checked, else dynamo
QUANTITIES = ("latency_ms", "throughput")
PARITY_TOLERANCE = 1e-4  # |onnx - torch| <= tolerance + tolerance * |torch|, elementwise
PARITY_BATCH = 3  # not the exported example's batch (2): a batch size baked into the graph shows
LEGACY_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"  # as `kdistill export` names them


@dataclass(frozen=True)
class Runtime:
    """Where a deployable runs: one of :data:`RUNTIMES`. ``threads``: CPU threads (ONNX Runtime's intra-op threads,
    torch's thread count while timing); None: ``torch.get_num_threads()``. ``cuda`` without a GPU is refused."""

    name: str = "onnxruntime"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.name not in RUNTIMES:
            raise ConfigError(f"unknown runtime {self.name!r}; choose one of {', '.join(RUNTIMES)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"runtime threads must be at least 1, got {self.threads}")
        if self.name == "cuda" and not torch.cuda.is_available():
            others = " or ".join(repr(name) for name in RUNTIMES if name != "cuda")
            raise ConfigError(
                "runtime 'cuda' needs a CUDA GPU and torch sees none (torch.cuda.is_available() is False); "
                f"measure on {others} (CPU) instead"
            )

    @property
    def cpu_threads(self) -> int:
        return self.threads if self.threads is not None else torch.get_num_threads()


def as_runtime(runtime: Runtime | str) -> Runtime:
    """A :class:`Runtime` from itself or its name."""
    return runtime if isinstance(runtime, Runtime) else Runtime(runtime)


# ----------------------------------------------------------------------------- optional modules


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:
        raise ConfigError(
            f"the onnxruntime runtime needs onnxruntime ({error}): pip install 'kdistill[export]'"
        ) from None
    return onnxruntime


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        raise ConfigError(f"reading ONNX files needs onnx ({error}): pip install 'kdistill[export]'") from None
    return onnx


def _quantization() -> tuple[ModuleType, ModuleType]:
    """``onnxruntime.quantization`` and its ``shape_inference`` (quant_pre_process)."""
    _onnxruntime()
    from onnxruntime import quantization
    from onnxruntime.quantization import shape_inference

    return quantization, shape_inference


# ----------------------------------------------------------------------------- timing


def _fixed_batch(batch: int, input_shape: Sequence[int]) -> Tensor:
    """The timing input: ``batch`` seeded normal images (batch, C, H, W), float32."""
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}")
    return torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- engines: what runs the model


class _OnnxEngine:
    """An ONNX Runtime CPU session on one file."""

    def __init__(self, path: Path, threads: int, log_severity: int = 3) -> None:
        onnxruntime = _onnxruntime()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = log_severity  # 3: errors only, 4: fatal only
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.threads = None  # torch's thread count does not matter here

    def input_shape(self, path: Path) -> tuple[int, ...]:
        """(C, H, W) of the model's input, when the file fixes every axis but the batch."""
        shape = self.session.get_inputs()[0].shape[1:]
        if not all(isinstance(size, int) for size in shape):
            raise ConfigError(f"{path}'s input has the symbolic shape {shape} beyond the batch axis; pass input_shape")
        return tuple(shape)

    def run(self, inputs: Tensor) -> Tensor:
        array = np.ascontiguousarray(inputs.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def timed_call(self, inputs: Tensor) -> TimedCall:
        feed = {self.input_name: np.ascontiguousarray(inputs.numpy(), dtype=np.float32)}
        run = self.session.run
        return lambda: run(None, feed)

    def timing_context(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class _TorchEngine:
    """A frozen copy of a module, eager on the CPU or a CUDA device."""

    def __init__(self, model: nn.Module, device: torch.device, threads: int | None) -> None:
        self.model = copy.deepcopy(model).eval().to(device)
        self.device = device
        self.threads = threads if device.type == "cpu" else None

    def run(self, inputs: Tensor) -> Tensor:
        with self.timing_context():
            return self.model(inputs.to(self.device)).float().cpu()

    def timed_call(self, inputs: Tensor) -> TimedCall:
        model, placed, device = self.model, inputs.to(self.device), self.device
        if device.type != "cuda":
            return lambda: model(placed)
        torch.cuda.synchronize(device)  # the copy of the inputs is not timed

        def call() -> None:
            model(placed)
            torch.cuda.synchronize(device)

        return call

    @contextlib.contextmanager
    def timing_context(self) -> Iterator[None]:
        """Inference mode, with ``threads`` torch CPU threads (restored after) when they were given."""
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                yield
        finally:
            if self.threads is not None:
                torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- ONNX files


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`write_onnx` wrote: the file, the exporter that made it, its seconds, its largest logit error."""

    path: Path
    exporter: str  # "legacy" (TorchScript-based) or "dynamo" (torch.export-based)
    seconds: float  # the export alone, without the parity check
    max_abs_diff: float  # vs torch on PARITY_BATCH random inputs


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; each submodule's training flag is restored after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def _on_cpu(model: nn.Module) -> nn.Module:
    """``model`` itself when its tensors are on the CPU, else a CPU copy."""
    tensors = [*model.parameters(), *model.buffers()]
    return model if all(tensor.device.type == "cpu" for tensor in tensors) else copy.deepcopy(model).cpu()


def _export_legacy(model: nn.Module, example: Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # its deprecation notices, and tracer warnings the parity check stands in for
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=LEGACY_OPSET,
            dynamo=False,
        )


def _export_dynamo(model: nn.Module, example: Tensor, path: Path) -> None:
    onnx_program(model, example).save(str(path))


_EXPORT = {"legacy": _export_legacy, "dynamo": _export_dynamo}


def _parity(model: nn.Module, path: Path, input_shape: Sequence[int]) -> tuple[bool, float]:
    """Whether the file's logits match ``model``'s within :data:`PARITY_TOLERANCE`, and the largest difference."""
    inputs = torch.randn(PARITY_BATCH, *input_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(inputs).float()  # (PARITY_BATCH, K)
    actual = _OnnxEngine(path, threads=1, log_severity=4).run(inputs)  # a failure raises; the caller reports it
    if actual.shape != expected.shape:
        return False, math.inf
    close = torch.allclose(actual, expected, rtol=PARITY_TOLERANCE, atol=PARITY_TOLERANCE)
    return close, (actual - expected).abs().max().item()


def write_onnx(model: nn.Module, input_shape: Sequence[int], path: str | Path, exporter: str = "auto") -> OnnxExport:
    """Export ``model`` (run in eval mode) for inputs (batch, *input_shape) to ``path``: input ``input`` with a
    dynamic batch axis, output ``logits``, checked against torch (:data:`PARITY_TOLERANCE`).

    ``exporter``: ``legacy`` (TorchScript-based, fast), ``dynamo`` (torch.export-based, as ``kdistill export``) or
    ``auto``: legacy, then dynamo when legacy fails or disagrees. A file that disagrees raises CheckpointError.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    _onnxruntime()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))  # (2, C, H, W)
    problems, failure = [], None
    with _eval_mode(_on_cpu(model)) as reference:
        for name in ("legacy", "dynamo") if exporter == "auto" else (exporter,):
            try:
                start = time.perf_counter()
                _EXPORT[name](reference, example, target)
                seconds = time.perf_counter() - start
                close, difference = _parity(reference, target, input_shape)
            except Exception as error:  # an export that fails, or a file that does not run at another batch size
                problems.append(f"{name} exporter: {type(error).__name__}: {error}")
                failure = error
                continue
            if close:
                return OnnxExport(target, name, seconds, difference)
            problems.append(f"{name} exporter: logits differ from torch by up to {difference:.3g}")
    raise CheckpointError(
        f"no ONNX export of the model (exported at batch 2) runs at batch {PARITY_BATCH} with logits within "
        f"{PARITY_TOLERANCE} of torch's: {'; '.join(problems)}"
    ) from failure


def _load_onnx(path: str | Path) -> Any:
    """The ONNX model's graph and metadata, without its external weight files."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"{file} is not an ONNX file (it does not exist)")
    return _onnx().load(str(file), load_external_data=False)


def onnx_parameter_count(path: str | Path) -> int:
    """Parameters of an ONNX model: the elements of its initializers, less int64 shape constants and the scales and
    zero points of quantize / dequantize nodes (so an int8 model counts as many as its fp32 source).

    Equal to torch's count for models without BatchNorm: both exporters fold an eval-mode BatchNorm into the
    convolution before it, so its weight and bias are not in the file.
    """
    model = _load_onnx(path)
    int64 = _onnx().TensorProto.INT64
    quantizers = {"QuantizeLinear", "DequantizeLinear"}
    scales = {name for node in model.graph.node if node.op_type in quantizers for name in node.input[1:]}
    return sum(
        math.prod(tensor.dims)
        for tensor in model.graph.initializer
        if tensor.data_type != int64 and tensor.name not in scales
    )


def onnx_file_bytes(path: str | Path) -> int:
    """Bytes on disk of an ONNX model: the file and the external data files its initializers name."""
    file = Path(path)
    model = _load_onnx(file)
    external = _onnx().TensorProto.EXTERNAL
    locations = {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == external
        for entry in tensor.external_data
        if entry.key == "location"
    }
    return file.stat().st_size + sum((file.parent / location).stat().st_size for location in locations)


# ----------------------------------------------------------------------------- the deployable


class Deployable:
    """A model as a runtime runs it, made once, then timed. Make one with :meth:`from_module` or :meth:`from_onnx`;
    :meth:`close` (or ``with``) releases the session and a temporary directory it owns.

    ``parameters``: the torch model's (``count_parameters``) when made from a module, else the file's
    (:func:`onnx_parameter_count`). ``onnx_path`` / ``file_bytes``: the ONNX artefact (None on torch runtimes).
    """

    def __init__(
        self,
        engine: _OnnxEngine | _TorchEngine,
        runtime: Runtime,
        input_shape: Sequence[int],
        parameters: int,
        onnx_path: Path | None = None,
        export: OnnxExport | None = None,
        directory: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self._engine = engine
        self.runtime = runtime
        self.input_shape = tuple(int(size) for size in input_shape)  # (C, H, W)
        self.parameters = parameters
        self.onnx_path = onnx_path
        self.export = export
        self._directory = directory

    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        input_shape: Sequence[int],
        runtime: Runtime | str = "onnxruntime",
        directory: str | Path | None = None,
        exporter: str = "auto",
        name: str = "model",
    ) -> Deployable:
        """``model`` for inputs (batch, *input_shape) on ``runtime``: for onnxruntime exported to
        ``<directory>/<name>.onnx`` (a temporary directory when None) by :func:`write_onnx`."""
        chosen = as_runtime(runtime)
        parameters = count_parameters(model)
        if chosen.name != "onnxruntime":
            device = torch.device("cuda" if chosen.name == "cuda" else "cpu")
            return cls(_TorchEngine(model, device, chosen.threads), chosen, input_shape, parameters)
        owned = tempfile.TemporaryDirectory(prefix="kdistill-deploy-") if directory is None else None
        folder = Path(owned.name if owned is not None else str(directory))
        export = write_onnx(model, input_shape, folder / f"{name}.onnx", exporter)
        engine = _OnnxEngine(export.path, chosen.cpu_threads)
        return cls(engine, chosen, input_shape, parameters, export.path, export, owned)

    @classmethod
    def from_onnx(
        cls, path: str | Path, runtime: Runtime | str = "onnxruntime", input_shape: Sequence[int] | None = None
    ) -> Deployable:
        """An existing ``.onnx`` file on ONNX Runtime; ``input_shape`` (C, H, W) is read from the file when None."""
        chosen = as_runtime(runtime)
        if chosen.name != "onnxruntime":
            raise ConfigError(
                f"an .onnx file runs on the 'onnxruntime' runtime, not {chosen.name!r}; "
                f"for {chosen.name!r} measure the model in memory (Deployable.from_module)"
            )
        file = Path(path)
        parameters = onnx_parameter_count(file)  # also refuses a missing file
        engine = _OnnxEngine(file, chosen.cpu_threads)
        shape = input_shape if input_shape is not None else engine.input_shape(file)
        return cls(engine, chosen, shape, parameters, file)

    @property
    def file_bytes(self) -> int | None:
        return onnx_file_bytes(self.onnx_path) if self.onnx_path is not None else None

    def run(self, inputs: Tensor) -> Tensor:
        """Logits (B, K), float32 on the CPU, of inputs (B, C, H, W)."""
        return self._engine.run(inputs)

    def timed_call(self, batch: int) -> TimedCall:
        """One forward pass on a fixed random batch of ``batch`` inputs; call it inside :meth:`timing_context`."""
        return self._engine.timed_call(_fixed_batch(batch, self.input_shape))

    def timing_context(self) -> contextlib.AbstractContextManager[None]:
        """What timed calls run under (torch: inference mode and the runtime's threads)."""
        return self._engine.timing_context()

    def latency_ms(self, batch: int = 1, repeats: int = 30, warmup: int = 5) -> float:
        """Median milliseconds of one call at ``batch`` (at batch 1: the latency per image)."""
        call = self.timed_call(batch)
        with self.timing_context():
            return 1000.0 * median_seconds(call, repeats, warmup)

    def throughput(self, batch: int = 64, repeats: int = 10, warmup: int = 2) -> float:
        """Images per second at ``batch``: ``batch`` / the median seconds of one call."""
        call = self.timed_call(batch)
        with self.timing_context():
            return batch / median_seconds(call, repeats, warmup)

    def close(self) -> None:
        """Release the session / model copy and remove the temporary directory this deployable owns."""
        self._engine = None  # type: ignore[assignment]
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def __enter__(self) -> Deployable:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- relative measurement


@dataclass(frozen=True)
class Interleaved:
    """Two deployables timed alternately: each one's median ``quantity`` and the median of the paired ratios b / a
    (latency: b's time / a's; throughput: b's images/s / a's), the number a relative budget is checked against."""

    quantity: str  # "latency_ms" (per call at ``batch``) or "throughput" (images/s)
    batch: int
    a: float
    b: float
    ratio: float
    pairs: int


@contextlib.contextmanager
def _both_timing(a: Deployable, b: Deployable) -> Iterator[None]:
    """Both deployables' timing contexts; refused when they would set torch to different thread counts."""
    threads = {engine.threads for engine in (a._engine, b._engine) if engine.threads is not None}
    if len(threads) > 1:
        raise ConfigError(f"the two deployables set different torch thread counts {sorted(threads)}; compare at one")
    with a.timing_context(), b.timing_context():
        yield


def measure_interleaved(
    a: Deployable, b: Deployable, quantity: str = "latency_ms", batch: int = 1, repeats: int = 30, warmup: int = 5
) -> Interleaved:
    """Time ``a`` and ``b`` alternately (a, b, b, a, a, b, ...: ``repeats`` pairs after ``warmup`` untimed ones; each
    side a block of calls lasting at least :data:`kdistill.runtime.timing.MIN_SAMPLE_S`)
    and return both medians and the median of the per-pair ratios b / a (see :class:`Interleaved`)."""
    if quantity not in QUANTITIES:
        raise ConfigError(f"unknown quantity {quantity!r}; choose one of {', '.join(QUANTITIES)}")
    check_counts(repeats, warmup)
    call_a, call_b = a.timed_call(batch), b.timed_call(batch)
    seconds_a, seconds_b = [], []
    with _both_timing(a, b):
        for _ in range(warmup):
            call_a()
            call_b()
        number_a, number_b = calls_per_sample(call_a), calls_per_sample(call_b)
        for pair in range(repeats):
            if pair % 2 == 0:
                seconds_a.append(seconds(call_a, number_a))
                seconds_b.append(seconds(call_b, number_b))
            else:
                seconds_b.append(seconds(call_b, number_b))
                seconds_a.append(seconds(call_a, number_a))
    if quantity == "latency_ms":
        ratios = [time_b / time_a for time_a, time_b in zip(seconds_a, seconds_b)]
        values = (1000.0 * statistics.median(seconds_a), 1000.0 * statistics.median(seconds_b))
    else:
        ratios = [time_a / time_b for time_a, time_b in zip(seconds_a, seconds_b)]
        values = (batch / statistics.median(seconds_a), batch / statistics.median(seconds_b))
    return Interleaved(quantity, batch, values[0], values[1], statistics.median(ratios), repeats)


# ----------------------------------------------------------------------------- int8 and accuracy


def _image_array(images: Tensor | np.ndarray, what: str) -> np.ndarray:
    """(N, C, H, W) float32, C-contiguous."""
    array = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
    if array.ndim != 4 or len(array) == 0:
        raise ConfigError(f"{what} must be a non-empty (N, C, H, W) batch, got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _input_name(path: Path) -> str:
    """The graph input that is not an initializer (the image batch)."""
    graph = _load_onnx(path).graph
    weights = {tensor.name for tensor in graph.initializer}
    return next(value.name for value in graph.input if value.name not in weights)


class _CalibrationBatches:
    """An ``onnxruntime.quantization.CalibrationDataReader`` (it recognises ``get_next``) over images in batches."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int) -> None:
        self._batches = iter([{input_name: images[start : start + batch]} for start in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_static_int8(
    onnx_path: str | Path,
    calibration_images: Tensor | np.ndarray,
    out_path: str | Path,
    batch: int = 32,
    per_channel: bool = True,
) -> Path:
    """Write an int8 copy of an fp32 ONNX model to ``out_path`` with ONNX Runtime static quantisation.

    ``quant_pre_process`` (shape inference and graph clean-up) first, then ``quantize_static``: QDQ format, int8
    activations and weights (S8S8, ONNX Runtime's first choice on CPU), weights per output channel where the op
    allows (Conv, Gemm, MatMul), activation ranges by MinMax calibration on ``calibration_images`` (N, C, H, W)
    float32 normalised as the model's inputs, fed ``batch`` at a time. The file appears complete or not at all.
    """
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}")
    source, target = Path(onnx_path), Path(out_path)
    images = _image_array(calibration_images, "calibration_images")
    input_name = _input_name(source)  # also refuses a missing file
    if target.resolve() == source.resolve():
        raise ConfigError(f"out_path {target} is the fp32 model itself; choose another path")
    quantization, shape_inference = _quantization()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as staging:
        prepared, written = Path(staging) / "prepared.onnx", Path(staging) / target.name
        shape_inference.quant_pre_process(str(source), str(prepared))
        quantization.quantize_static(
            str(prepared),
            str(written),
            _CalibrationBatches(input_name, images, batch),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=quantization.QuantType.QInt8,
            weight_type=quantization.QuantType.QInt8,
            calibrate_method=quantization.CalibrationMethod.MinMax,
        )
        os.replace(written, target)
    return target


def onnx_accuracy(
    onnx_path: str | Path, images: Tensor | np.ndarray, targets: Tensor | np.ndarray, batch: int = 256
) -> tuple[float, Tensor]:
    """Top-1 accuracy (%) of an ONNX model on ``images`` (N, C, H, W) and ``targets`` (N,), run ``batch`` at a
    time on ONNX Runtime CPU, and its logits (N, K)."""
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}")
    array = _image_array(images, "images")
    labels = torch.as_tensor(targets).reshape(-1)
    if len(labels) != len(array):
        raise ConfigError(f"{len(array)} images but {len(labels)} targets")
    file = Path(onnx_path)
    _load_onnx(file)  # refuses a missing file with a clear message
    engine = _OnnxEngine(file, torch.get_num_threads())
    logits = torch.cat(
        [engine.run(torch.from_numpy(array[start : start + batch])) for start in range(0, len(array), batch)]
    )
    accuracy = 100.0 * (logits.argmax(1) == labels).float().mean().item()
    return accuracy, logits  # (N, K)
