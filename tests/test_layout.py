"""The house rules of the code base: which layer may import which, and no import cycles at all
(imports inside functions count: they are still dependencies)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("genfl_cli", "server_app", "strategy", "client_app", "generation", "genfl_torch", "genfl_protocol", "conf")
# What each layer may import from the project (besides itself). Lower layers never import upper ones.
ALLOWED = {
    "conf": set(),
    # The ground floor: the message contract and Eq. (1)'s arithmetic (NumPy only), shared by the
    # ServerApp's strategy and the ClientApp, so neither imports the other's room.
    "genfl_protocol": set(),
    "genfl_torch": {"genfl_protocol"},
    "generation": {"genfl_torch", "genfl_protocol", "conf"},
    "client_app": {"genfl_torch", "genfl_protocol"},
    # The Flower layer never imports torch: the protocol, plus the heap trimming (ctypes, no torch).
    "strategy": {"genfl_protocol", "genfl_torch.memory"},
    "server_app": {"strategy", "generation", "genfl_torch", "genfl_protocol", "client_app", "conf"},
    "genfl_cli": {"server_app", "strategy", "generation", "genfl_torch", "genfl_protocol", "client_app", "conf"},
}
NO_FLOWER = ("genfl_protocol", "genfl_torch", "generation", "conf")  # plain NumPy / PyTorch / diffusers: no Flower


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    return {module: {i for i in _imports(path) if i in files and i != module} for module, path in files.items()}, files


def test_each_layer_imports_only_the_layers_below_it():
    graph, files = _graph()
    wrong = sorted((m, i) for m, deps in graph.items() for i in deps
                   if i.split(".")[0] != m.split(".")[0] and i.split(".")[0] not in ALLOWED[m.split(".")[0]]
                   and i not in ALLOWED[m.split(".")[0]])
    assert wrong == []
    flower = sorted(m for m, p in files.items() if m.split(".")[0] in NO_FLOWER
                    and any(i.split(".")[0] == "flwr" for i in _imports(p)))
    assert flower == []


def test_no_module_imports_itself_through_others():
    graph, _ = _graph()
    cycles, state = [], {}

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_benchmarks_use_the_library_not_the_commands():
    """bench/ imports no module of genfl_cli/ (the operator's commands): what a benchmark shares with a command
    (reading results, a sweep's grid, a run's processes) lives in a layer below it; a benchmark that needs a
    command runs it (`python -m genfl_cli.run ...`)."""
    wrong = sorted((str(p.relative_to(REPO)), i) for p in (REPO / "bench").rglob("*.py") for i in _imports(p)
                   if i.split(".")[0] == "genfl_cli")
    assert wrong == []


def test_the_protocol_is_numpy_only():
    """Both sides import it: torch in it would put torch under the strategy (and on the server's Flower layer)."""
    heavy = sorted((p.name, i) for p in (REPO / "genfl_protocol").rglob("*.py") for i in _imports(p)
                   if i.split(".")[0] in ("torch", "flwr", "diffusers"))
    assert heavy == []


def test_no_re_export_shims():
    """A module that only re-exports another's names hides where code lives (strategy/aggregation.py was one)."""
    assert not (REPO / "strategy" / "aggregation.py").exists()
    assert not (REPO / "client_app" / "contract.py").exists() and not (REPO / "genfl_torch" / "mixing.py").exists()


def test_no_module_overfills():
    """A module past 400 lines is two rooms in one (issue 27): split it by what each part is for."""
    big = sorted((str(p.relative_to(REPO)), n) for package in PACKAGES for p in (REPO / package).rglob("*.py")
                 if (n := len(p.read_text().splitlines())) > 400)
    assert big == []


def test_every_package_is_shipped_in_the_wheel():
    """pyproject.toml lists packages by name: a new subpackage left off it is missing from an installed
    wheel (server_app.tracking was), which only the slow wheel test would notice."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for package in PACKAGES for p in (REPO / package).rglob("__init__.py")}
    assert found - listed == set() and set(PACKAGES) <= listed
