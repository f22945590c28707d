"""A griffe extension for the API reference: kdistill's docstrings are written in reST habits (``>>>`` examples,
``:func:`name``` roles), which Markdown would render as nested quotes and literal role names. This turns each run of
``>>>`` lines into a fenced ``pycon`` block and each role into plain inline code. Loaded by mkdocs.yml."""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc):`~?([^`]+)`")


def fence_doctests(text: str) -> str:
    """Wrap every block of ``>>>``/``...`` lines (outside fenced code) in a ```pycon fence."""
    out: list[str] = []
    in_fence = in_doctest = False
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```"):
            in_fence = not in_fence
        starts = not in_fence and stripped.startswith(">>>")
        continues = in_doctest and stripped and not stripped.startswith("```")
        if starts and not in_doctest:
            out.append("```pycon")
            in_doctest = True
        elif in_doctest and not (starts or continues):
            out.append("```")
            in_doctest = False
        out.append(line)
    if in_doctest:
        out.append("```")
    return "\n".join(out)


class RstDocstrings(Extension):
    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_doctests(ROLE.sub(r"`\1`", obj.docstring.value))
