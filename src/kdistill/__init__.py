"""kdistill: knowledge distillation toolkit (teacher -> student) in PyTorch."""

__version__ = "0.1.0"
