"""The docs keep up with the code: every CLI subcommand has its section in docs/commands.md and every registered
method is described in docs/methods.md. (`make test` builds the site with `mkdocs build --strict`, which checks links
and API references; these tests only read the Markdown, so they stay fast.)"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from kdistill.cli import build_parser
from kdistill.methods import METHODS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def subcommand_names() -> list[str]:
    """The names of the `kdistill` subcommands, read from the parser the CLI itself uses."""
    actions = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    assert len(actions) == 1, "kdistill's parser should have exactly one set of subcommands"
    return list(actions[0].choices)


def headings(markdown: str) -> set[str]:
    """The text of every Markdown heading (`#` to `######`), without its marks and backticks."""
    return {match.strip().strip("`").strip() for match in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", markdown, re.M)}


def test_every_subcommand_has_a_section_in_commands_md() -> None:
    names = subcommand_names()
    assert {"train", "distill", "export", "methods"} <= set(names)  # the parser is the one we think it is
    found = headings((DOCS / "commands.md").read_text(encoding="utf-8"))
    missing = [name for name in names if f"kdistill {name}" not in found]
    assert not missing, f"docs/commands.md has no '## kdistill <command>' section for: {missing}"


def test_every_method_is_described_in_methods_md() -> None:
    names = METHODS.names()
    assert {"ce", "kd", "funmatch", "simkd"} <= set(names)
    text = (DOCS / "methods.md").read_text(encoding="utf-8")
    found = headings(text)
    missing = [name for name in names if name not in found]
    assert not missing, f"docs/methods.md has no '### <method>' section for: {missing}"


def test_headings_are_read_as_the_tests_expect() -> None:
    sample = "# Title\n\n## kdistill train\n\n### `kd`\n\ntext ## not a heading\n"
    assert headings(sample) == {"Title", "kdistill train", "kd"}
