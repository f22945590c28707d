"""Distillation methods: one file each, registered with ``@register_method``.

See :mod:`kdistill.methods.base` for the interface. Importing this package imports every method
module, so ``METHODS`` lists them all.
"""

from kdistill.methods.base import METHODS, Batch, DataInfo, Method, StepOutput, register_method
from kdistill.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["METHODS", "Batch", "DataInfo", "Method", "StepOutput", "register_method"]
