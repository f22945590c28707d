"""The deployable student: written at the end of every run as ``student.pt``, read back by ``load_student``.

``student.pt`` holds the weights of ``method.student_for_export()`` (for SimKD: encoder + projector +
the reused teacher classifier) with the resolved run config, so it is self-contained: the teachers'
own checkpoints are not needed to load it. A method that deploys several networks (``method.deployables()``:
mutual learning's peers) also gets one ``<name>.pt`` each, loaded the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from kdistill.config import Config, from_dict, to_dict
from kdistill.contracts import CheckpointError, DataInfo
from kdistill.engine.builders import build_method
from kdistill.methods import Method
from kdistill.models.loading import STUDENT_KIND, read_checkpoint
from kdistill.runtime.io import atomic_save


def save_student(
    method: Method[Any], config: Config, info: DataInfo, path: str | Path, deployable: str | None = None
) -> None:
    """Write ``method.student_for_export()``, or the deployable network named ``deployable``
    (``method.deployables()``), with everything :func:`load_student` needs to rebuild it."""
    module = method.student_for_export() if deployable is None else method.deployables()[deployable]
    atomic_save(
        {
            "kind": STUDENT_KIND,
            "method": config.method.name,
            "deployable": deployable,  # None: student_for_export(); else the key in method.deployables()
            # A plain architecture record when the export is the student itself (reloadable as a teacher).
            "student_spec": getattr(module, "kdistill_spec", None),
            "config": to_dict(config),
            "num_classes": info.num_classes,
            "input_shape": list(info.input_shape),
            "num_train": info.num_train,
            "input_mean": list(info.input_mean) if info.input_mean is not None else None,
            "input_std": list(info.input_std) if info.input_std is not None else None,
            "state_dict": module.state_dict(),
        },
        path,
    )


def save_deployables(method: Method[Any], config: Config, info: DataInfo, directory: str | Path) -> list[Path]:
    """``student.pt`` and, when the method deploys several networks (mutual learning's peers), also each one as
    ``<name>.pt`` (``peer1.pt`` is then the network of ``student.pt``); returns the paths written."""
    directory = Path(directory)
    save_student(method, config, info, directory / "student.pt")
    written = [directory / "student.pt"]
    names = list(method.deployables())
    reserved = [name for name in names if name in ("student", "best", "last") or not name.isidentifier()]
    if len(names) > 1 and reserved:
        raise ValueError(f"{type(method).__name__}.deployables(): names {reserved} would overwrite run files")
    if len(names) > 1:
        for name in names:
            save_student(method, config, info, directory / f"{name}.pt", deployable=name)
            written.append(directory / f"{name}.pt")
    return written


def load_student(path: str | Path) -> tuple[nn.Module, Config, DataInfo]:
    """Rebuild the exported student (any method) from ``student.pt`` and load its weights."""
    payload = read_checkpoint(path)
    if not isinstance(payload, dict) or payload.get("kind") != STUDENT_KIND:
        raise CheckpointError(f"{path} is not a kdistill student export (student.pt)")
    return student_from_payload(payload)


def student_from_payload(payload: dict[str, Any]) -> tuple[nn.Module, Config, DataInfo]:
    """The student of an already read ``student.pt`` payload."""
    config = from_dict(Config, payload["config"])
    mean, std = payload.get("input_mean"), payload.get("input_std")  # absent in exports before they were recorded
    info = DataInfo(
        num_classes=payload["num_classes"],
        input_shape=tuple(payload["input_shape"]),  # (C, H, W) as save_student wrote it
        num_train=payload["num_train"],
        batch_size=config.data.batch_size,
        input_mean=tuple(mean) if mean is not None else None,
        input_std=tuple(std) if std is not None else None,
    )
    method = build_method(config, info, load_weights=False)  # architecture only; weights follow
    deployable = payload.get("deployable")  # absent in exports before it was recorded
    module = method.student_for_export() if deployable is None else method.deployables()[deployable]
    module.load_state_dict(payload["state_dict"])
    return module.eval(), config, info
