"""The shape of the package (DESIGN.md rule 12): layers only point down, no import cycles, no function-level
import of kdistill to dodge one, functions under 60 lines, package ``__init__`` files that only hand names on,
and a method contract that names each method once."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from kdistill.config import METHOD_CONFIGS, MethodConfig
from kdistill.methods import METHODS, Method, MethodTraits, register_method

SOURCE = Path(__file__).resolve().parent.parent / "src" / "kdistill"

# Lowest first. A module may import modules of a lower layer, and of its own package at the same layer.
LAYERS: list[tuple[str, ...]] = [
    ("kdistill.errors", "kdistill.choices"),  # torch-free: what the command line needs before a command runs
    ("kdistill.contracts", "kdistill.registry"),
    ("kdistill.runtime",),
    ("kdistill.config",),
    ("kdistill.checks",),
    ("kdistill.data", "kdistill.models"),
    ("kdistill.methods",),
    ("kdistill.engine",),
    ("kdistill.track",),
    ("kdistill.report", "kdistill.deploy"),
    ("kdistill.compress",),
    ("kdistill.api",),
    ("kdistill.sweep",),
    ("kdistill.tune",),
    ("kdistill.cli",),
    ("kdistill",),  # the package itself: hands on the version
]
# The command line imports each command's modules inside its handler, so `kdistill --help` answers without importing
# torch (tests/test_cli_startup.py). It is the top layer, so such an import cannot dodge a cycle; its late imports are
# still checked for direction and cycles below (they count as module-level edges of the import graph).
LAZY_IMPORTERS = {"kdistill.cli"}
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def group_of(module: str) -> tuple[int, str]:
    """(layer index, the layer entry the module belongs to)."""
    best: tuple[int, str] | None = None
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            inside = module == entry or module.startswith(entry + ".")
            if inside and (best is None or len(entry) > len(best[1])):
                best = (index, entry)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def imported_modules(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """kdistill modules an import statement loads (``from a import b``: a.b when b is a module, else a)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.startswith("kdistill")]
    base = node.module or ""
    if node.level:
        base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
    if not base.startswith("kdistill"):
        return []
    targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
    names_only = [alias.name for alias in node.names if f"{base}.{alias.name}" not in MODULES]
    return targets + ([base] if names_only else [])


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, tree in TREES.items():
        for node in ast.walk(tree) if name in LAZY_IMPORTERS else tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(target for target in imported_modules(name, node) if target != name)
    return graph


def test_every_module_is_in_a_layer_and_imports_point_down():
    upward = []
    for source, targets in import_graph().items():
        source_layer, source_entry = group_of(source)
        for target in targets:
            target_layer, target_entry = group_of(target)
            if target_layer > source_layer or (target_layer == source_layer and target_entry != source_entry):
                upward.append(f"{source} -> {target}")
    assert not upward, "imports that do not point down: " + ", ".join(sorted(upward))


def test_there_is_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The two checks above can fail: a made-up module pair is caught."""
    tree = ast.parse("from kdistill.engine.loop import fit\nfrom kdistill import cli\n")
    targets = {t for node in tree.body for t in imported_modules("kdistill.config", node)}  # type: ignore[arg-type]
    assert targets == {"kdistill.engine.loop", "kdistill.cli"}
    assert group_of("kdistill.engine.loop")[0] > group_of("kdistill.config")[0]


def test_no_function_level_import_of_kdistill():
    late = []
    for name, tree in TREES.items():
        if name in LAZY_IMPORTERS:
            continue
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and imported_modules(name, node):
                        late.append(f"{name}:{node.lineno}")
    assert not late, f"function-level imports of kdistill modules: {late}"


def test_no_function_is_longer_than_the_rule():
    long = []
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("package", sorted(name for name, path in MODULES.items() if path.name == "__init__.py"))
def test_package_init_only_hands_names_on(package):
    allowed_assignments = {"__all__", "__version__"}
    for node in TREES[package].body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # the docstring
        targets = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
        assert targets and set(targets) <= allowed_assignments, (
            f"{package}/__init__.py holds logic at line {node.lineno}"
        )


def test_each_method_is_named_once_and_typed_by_its_config_class():
    assert set(METHODS.names()) == set(METHOD_CONFIGS.names())
    for name in METHODS.names():
        method_cls = METHODS.get(name)
        assert method_cls.name == name
        assert method_cls.config_class is METHOD_CONFIGS.get(name) and method_cls.config_class is not MethodConfig
        assert method_cls.config_class().name == name  # the config's name comes from the registration
        assert isinstance(method_cls.traits, MethodTraits)
        assert "name" not in vars(method_cls.config_class).get("__annotations__", {}), f"{name} repeats its name"


def test_a_method_without_its_own_config_class_is_refused():
    class Nameless(Method[MethodConfig]):  # type: ignore[type-var]
        pass

    with pytest.raises(TypeError, match="needs its own config class"):
        register_method("nameless")(Nameless)
    assert "nameless" not in METHODS


def test_a_variant_may_subclass_a_registered_config_but_not_reuse_it(monkeypatch):
    for registry in (METHODS, METHOD_CONFIGS):  # registrations made here are undone after the test
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    kd_cls, kd_config = METHODS.get("kd"), METHOD_CONFIGS.get("kd")

    @dataclasses.dataclass
    class VariantConfig(kd_config):  # type: ignore[valid-type,misc]
        extra: float = 1.0

    class Variant(kd_cls):  # type: ignore[valid-type,misc]
        config_class = VariantConfig

    register_method("kd_variant")(Variant)
    assert METHOD_CONFIGS.get("kd_variant")().name == "kd_variant"
    assert kd_config().name == "kd" and kd_config.method_name == "kd"  # the parent keeps its own name

    class Borrower(kd_cls):  # type: ignore[valid-type,misc]
        config_class = kd_config

    with pytest.raises(TypeError, match="needs its own config class"):
        register_method("kd_borrower")(Borrower)


def test_a_config_cannot_claim_another_method():
    kd_config = METHOD_CONFIGS.get("kd")
    with pytest.raises(ValueError, match="does not match"):
        kd_config(name="ce")
    assert dataclasses.replace(kd_config(), temperature=2.0).name == "kd"
