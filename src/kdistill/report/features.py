"""Teacher vs student features of one distillation run, mapped to 2-D with t-SNE (SimKD, Figure S.2).

The method is rebuilt from the run's ``last.pt`` (else ``best.pt``) as ``kdistill eval`` does: the saved config,
the data, :func:`~kdistill.engine.builders.build_method` (which loads the teachers from their checkpoints) and
the saved method state. Features are each model's penultimate output through the feature-tap interface
(``forward_features(x).embedding``, the classifier's input): the first teacher's, and the deployable student's
(``student_for_export()``; for SimKD the projected, pooled map fed to the reused teacher classifier), for the
first ``samples`` test images. Each set is embedded on its own by ``sklearn.manifold.TSNE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill.config import Config, load_config
from kdistill.contracts import CheckpointError, ConfigError
from kdistill.data import Data, build_data, data_info, make_loader
from kdistill.engine.builders import build_method, load_method_state, resolve_device
from kdistill.methods import Method
from kdistill.models.loading import read_checkpoint
from kdistill.models.taps import TappedModel, as_tapped
from kdistill.report.plots import Plot, plot_tsne

MIN_SAMPLES = 10  # t-SNE needs more samples than its perplexity


@dataclass
class FeatureSet:
    """Penultimate features of the same test images."""

    teacher: np.ndarray  # (N, D_teacher)
    student: np.ndarray  # (N, D_student)
    labels: np.ndarray  # (N,) int
    class_names: list[str]


def rebuild_method(run_dir: str | Path, device: torch.device) -> tuple[Method[Any], Config, Data]:
    """The run's method (student, teachers, method modules) with its last saved state, in eval mode."""
    path = Path(run_dir)
    checkpoint = next((path / name for name in ("last.pt", "best.pt") if (path / name).is_file()), None)
    if checkpoint is None:
        raise CheckpointError(f"{path} has no last.pt or best.pt to rebuild the student and teacher from")
    payload = read_checkpoint(checkpoint)
    if not isinstance(payload, dict) or "config" not in payload or "method_state" not in payload:
        raise CheckpointError(f"{checkpoint} is not a kdistill run checkpoint (no config / method_state)")
    config = load_config(base=payload["config"])
    if not config.teachers():
        raise ConfigError(
            f"{path}: method {config.method.name!r} has no teacher; the t-SNE compares a teacher's and a student's "
            "features, so pass a distillation run"
        )
    data = build_data(config.data, config.seed)
    try:
        method = build_method(config, data_info(data, config.data.batch_size))
    except CheckpointError as error:
        raise CheckpointError(
            f"{path}: {error} (a relative teacher checkpoint is read from the current directory: run the report "
            "where the run was trained)"
        ) from None
    load_method_state(method, payload["method_state"])
    return method.to(device).eval(), config, data


def _tapped(model: torch.nn.Module, who: str) -> TappedModel:
    try:
        return as_tapped(model)
    except TypeError as error:
        raise ConfigError(f"the {who} has no feature taps: {error}") from None


def penultimate_features(
    method: Method[Any], data: Data, samples: int, batch_size: int, device: torch.device
) -> FeatureSet:
    """Teacher and student embeddings of the first ``samples`` test images (fewer if the split is smaller)."""
    teacher, student = _tapped(method.teacher, "teacher"), _tapped(method.student_for_export(), "student")
    loader = make_loader(data.test, min(batch_size, samples), False, 0)
    parts: dict[str, list[torch.Tensor]] = {"teacher": [], "student": [], "labels": []}
    seen = 0
    with torch.no_grad():
        for batch in loader:
            inputs = batch.inputs.to(device)  # (B, C, H, W)
            parts["teacher"].append(teacher.forward_features(inputs).embedding.flatten(1).float().cpu())  # (B, D_t)
            parts["student"].append(student.forward_features(inputs).embedding.flatten(1).float().cpu())  # (B, D_s)
            parts["labels"].append(batch.targets)
            seen += len(batch)
            if seen >= samples:
                break
    joined = {key: torch.cat(values)[:samples].numpy() for key, values in parts.items()}
    names = data.class_names or [str(i) for i in range(data.num_classes)]
    return FeatureSet(joined["teacher"], joined["student"], joined["labels"].astype(int), list(names))


def tsne_map(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) t-SNE coordinates (PCA start, perplexity min(30, (N - 1) / 3))."""
    from sklearn.manifold import TSNE  # heavy; only when a t-SNE is asked for

    perplexity = min(30.0, (len(features) - 1) / 3.0)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    return np.asarray(tsne.fit_transform(features.astype(np.float64)))


def write_tsne(
    run_dir: str | Path, path: str | Path, samples: int = 500, seed: int = 0, device: str = "auto"
) -> tuple[Plot, FeatureSet]:
    """The two-panel t-SNE (teacher | student, coloured by class) of a distillation run, saved at ``path``."""
    if samples < MIN_SAMPLES:
        raise ConfigError(f"--tsne {samples}: t-SNE needs at least {MIN_SAMPLES} images")
    torch_device = resolve_device(device)
    method, config, data = rebuild_method(run_dir, torch_device)
    features = penultimate_features(method, data, samples, config.data.eval_batch_size, torch_device)
    teacher_name = config.teachers()[0].name or "teacher"
    maps = {
        f"teacher ({teacher_name})": tsne_map(features.teacher, seed),
        f"student ({config.student.name}, {config.method.name})": tsne_map(features.student, seed),
    }
    title = f"{config.name}: penultimate features of {len(features.labels)} test images ({config.data.name}), t-SNE"
    return plot_tsne(maps, features.labels, features.class_names, path, title), features
