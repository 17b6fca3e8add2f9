"""The package's shape: layers import downward only, no import circles, short functions, and no
module outside the method registry branches on a training method's name.

The layer order is the one `docs/design-notes.md` draws; every module of the package must belong
to a layer, so a new top-level module has to be placed here (and in the notes) to pass.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import consistency_models

PACKAGE = Path(consistency_models.__file__).resolve().parent
NAME = "consistency_models"

# Bottom → top. A module may import from its own layer (no circles) and from the layers below.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "outputs", "registry"),                # the one exception; diffusers-shaped outputs; plug-in tables
    ("parametrization", "schedule", "distributed", "trigflow", "meanflow"),  # math; process groups shared by sampling and training
    ("sampling", "networks", "data"),                  # samplers; architectures; data sets
    ("kinds", "io", "fast_paths"),                     # model kinds; formats on disk; compile / CUDA graphs / fast kernels
    ("scheduler", "metrics"),                          # the diffusers scheduler adapter; FID & co. on features
    ("pipeline",),
    ("editing", "evaluation"),                         # features built on the pipeline
    ("training",),
    ("cli", "__main__", "__init__"),                   # the command line; the package's public face
]
RANK = {top: rank for rank, tops in enumerate(LAYERS) for top in tops}


def modules() -> dict[str, Path]:
    """Dotted name (without the package prefix) → file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_package: bool) -> list[str]:
    """The package modules an import statement names (dotted, without the package prefix)."""
    if isinstance(node, ast.Import):
        return [a.name[len(NAME) + 1:] for a in node.names if a.name.startswith(NAME + ".")]
    if node.level == 0:
        if not (node.module or "").startswith(NAME):
            return []
        base = (node.module or "")[len(NAME) + 1:]
    else:
        parts = module.split(".") if module != "__init__" else []
        if not is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
        base = ".".join([*parts, *([node.module] if node.module else [])])
    names = [f"{base}.{a.name}" if base else a.name for a in node.names]
    return [base] + names if base else names


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports (at any depth of its code, TYPE_CHECKING included)."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(name, node, path.name == "__init__.py"):
                    while target and target not in mods:  # `from .x import name` names x, not x.name
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        targets.add(target)
        graph[name] = targets
    return graph


def layer(module: str) -> int:
    top = module.split(".")[0]
    assert top in RANK, f"{module}: not in any layer of tests/test_layers.py; place it (and in the design notes)"
    return RANK[top]


def test_every_module_has_a_layer():
    for module in modules():
        layer(module)


def test_imports_run_downward_only():
    upward = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
              for m, targets in import_graph().items() for t in targets
              if layer(t) > layer(m) and not (m == "__init__")]
    assert upward == []


def test_no_import_circles():
    graph = import_graph()
    # A package's __init__ importing its own submodules is how packages are assembled, not a circle.
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert circles == []


def test_the_checks_see_imports(tmp_path):
    """The graph is not empty by accident: known imports are found, relative ones resolved."""
    graph = import_graph()
    assert "pipeline" in graph["editing"] and "io.pipeline_folder" in graph["pipeline"]
    assert "training.methods.registry" in graph["training.methods.cd"]
    assert {"parametrization", "schedule"} <= graph["scheduler"]


def test_functions_are_shorter_than_80_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length >= 80:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert long == []


def test_only_the_registry_knows_method_names():
    """No `method ==`, `method != ` or `method in (...)` outside training/methods/."""
    pattern = re.compile(r"method\s*(==|!=|\bin\b)")
    methods_dir = PACKAGE / "training" / "methods"
    found = [f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}"
             for path in PACKAGE.rglob("*.py") if methods_dir not in path.parents
             for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line.split("#")[0])]
    assert found == []


def test_only_the_kinds_registry_compares_kind_names():
    """No `== "edm"`, `!= "consistency"`, `in ("trigflow", …)` and the like outside kinds/: a model
    kind's meaning is read from its record (issue 21)."""
    names = "consistency|edm|trigflow|trigflow_edm|meanflow"
    pattern = re.compile(rf'[=!]=\s*"({names})"|"({names})"\s*[=!]=|\bin\s*[(\[{{]\s*"({names})"')
    kinds_dir = PACKAGE / "kinds"
    found = [f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}"
             for path in PACKAGE.rglob("*.py") if kinds_dir not in path.parents
             for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line.split("#")[0])]
    assert found == []
    assert pattern.search('if parametrization != "edm":') and pattern.search('p in ("trigflow", "trigflow_edm")')


@pytest.mark.parametrize("module", ["cli.train", "cli.sample", "cli.edit"])
def test_cli_modules_stay_thin(module):
    """A subcommand module parses and calls: no sampling loop, no tensor maths of its own."""
    text = modules()[module].read_text()
    assert "torch.no_grad" not in text and "sample_consistency" not in text and "karras_sigmas" not in text
