"""kdistill: knowledge distillation in PyTorch.

Importing the package registers the built-in datasets, models and methods (so a config naming them can be
read); the operations are in :mod:`kdistill.api`, the command line in :mod:`kdistill.cli`.
"""

from kdistill import data, methods, models  # registrations
from kdistill.contracts import VERSION as __version__

__all__ = ["__version__", "data", "methods", "models"]
