"""The zoo's catalogue for `kdistill models`: name, family, parameter count, reference source."""

from __future__ import annotations

from kdistill.models.registry import MODEL_INFO, MODELS
from kdistill.models.taps import count_parameters


def model_catalog(num_classes: int = 100, input_shape: tuple[int, int, int] = (3, 32, 32)) -> list[dict]:
    """One row per registered zoo model (built once to count its parameters), sorted by family then name.

    ``source`` is the reference implementation (and its published count) the model was checked against.
    """
    rows = []
    for name in MODELS.names():
        info = MODEL_INFO.get(name, {})
        model = MODELS.get(name)(num_classes, tuple(input_shape))
        rows.append(
            {
                "name": name,
                "family": info.get("family", ""),
                "parameters": count_parameters(model),
                "source": info.get("source", ""),
            }
        )
        del model
    return sorted(rows, key=lambda row: (row["family"], row["parameters"], row["name"]))
