"""kdistill's version and the choices and defaults that ``kdistill --help`` shows, without importing torch.

The modules that act on them import them from here (``deploy.export`` the formats, ``sweep.run`` the objectives,
``api`` the demo's few-labels setting), so each is written once and the help answers in well under a second.
Nothing here imports another kdistill module.
"""

from __future__ import annotations

from dataclasses import dataclass

VERSION = "0.1.0"  # kdistill's version (pyproject.toml), recorded in exports; the package hands it on as __version__

EXPORT_FORMATS = {"torchscript": ".pt", "onnx": ".onnx", "safetensors": ".safetensors"}  # format -> file suffix

PIPELINES = ("auto", "batched", "per_sample")  # data.pipeline: how in-memory datasets run their augmentation

SWEEP_OBJECTIVES = ("final_val_acc", "best_val_acc")  # what ranks a sweep's points (validation accuracy, never test)


@dataclass(frozen=True)
class FewLabels:
    """The demo's second setting: ``labelled`` training images keep their label, the rest are unlabelled. Four arms
    take it apart: the student alone on the labelled images; KD on those images only (soft targets on the same
    images: Hinton et al.'s 3% experiment); the teacher's hard labels (argmax) on the unlabelled rest
    (pseudo-labelling: more images labelled by the teacher); and KD on every image (soft targets on the extra
    images: Hinton's transfer set). Each arm's settings were chosen on validation accuracy, never test, by the sweeps
    in docs/results.md ("How the demo's settings were chosen")."""

    labelled: int = 1000
    alone_epochs: int = 100  # the arms on the labelled images alone (student alone, KD on the same images)
    alone_lr: float = 0.05
    temperature: float = 1.0
    kd_weight: float = 0.9  # lambda: (1 - lambda) CE on the labelled samples + lambda T^2 KL on all
    same_temperature: float = 10.0  # KD on the labelled images only
    same_kd_weight: float = 0.5
    pseudo_kd_weight: float = 0.9  # (1 - lambda) CE on the labelled + lambda CE(argmax teacher) on all
