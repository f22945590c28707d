"""Distillation methods: one file each, registered with ``@register_method``.

See :mod:`kdistill.methods.base` for the interface. Importing this package registers every method listed
below (adding a method adds its module to this list: the one registration line).
"""

from kdistill.methods import (  # registrations
    ab,
    at,
    cc,
    ce,
    crd,
    dist,
    dkd,
    fitnet,
    fsp,
    ft,
    funmatch,
    kd,
    mlkd,
    nst,
    pkt,
    reviewkd,
    rkd,
    semckd,
    simkd,
    sp,
    srrl,
    vid,
)
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
    "ab",
    "at",
    "cc",
    "ce",
    "crd",
    "dist",
    "dkd",
    "fitnet",
    "fsp",
    "ft",
    "funmatch",
    "kd",
    "mlkd",
    "nst",
    "pkt",
    "reviewkd",
    "rkd",
    "semckd",
    "simkd",
    "sp",
    "srrl",
    "vid",
]
