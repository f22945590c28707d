"""Distillation methods: one file each, registered with ``@register_method``.

See :mod:`kdistill.methods.base` for the interface. Importing this package registers every method listed
below (adding a method adds its module to this list: the one registration line).
"""

from kdistill.methods import at, ce, crd, dkd, fitnet, funmatch, kd, semckd, simkd, sp, srrl, vid  # registrations
from kdistill.methods.base import (
    METHODS,
    CachedTeacherOutputs,
    Method,
    MethodTraits,
    TeacherOutputs,
    register_method,
)

__all__ = [
    "METHODS",
    "CachedTeacherOutputs",
    "Method",
    "MethodTraits",
    "TeacherOutputs",
    "register_method",
    "at",
    "ce",
    "crd",
    "dkd",
    "fitnet",
    "funmatch",
    "kd",
    "semckd",
    "simkd",
    "sp",
    "srrl",
    "vid",
]
