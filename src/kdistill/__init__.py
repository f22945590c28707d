"""kdistill: knowledge distillation in PyTorch.

Importing the package is light (no torch): the operations are in :mod:`kdistill.api`, the command line in
:mod:`kdistill.cli`. The built-in datasets, models and methods register themselves when their package
(:mod:`kdistill.data`, :mod:`kdistill.models`, :mod:`kdistill.methods`) is imported, which every module that
looks them up does (the method configs' registry imports :mod:`kdistill.methods` at its first lookup).
"""

from kdistill.choices import VERSION as __version__

__all__ = ["__version__"]
