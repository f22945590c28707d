"""Deployment: export a run's student (TorchScript, ONNX, safetensors) with a parity check."""

from kdistill.deploy.export import FORMATS, export_run, load_safetensors_student, parity_check

__all__ = ["FORMATS", "export_run", "load_safetensors_student", "parity_check"]
