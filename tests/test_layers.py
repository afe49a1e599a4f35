"""The package's layers, read from its import statements: no module imports one from a layer above it, and
no library function imports a project module (imports inside functions hide the dependency graph)."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "xformer_jax"
# Each unit of xformer_jax and its layer: a top-level module or package, or one module of a package that sits
# higher than the rest of it (convert's readers serve the factory, convert/to_run.py writes a run with the
# trainer). A module belongs to the most specific unit naming it, and imports only units of its layer or below.
LAYERS = {
    "storage": 0, "rundir": 0, "partitioning": 0, "data": 0, "plan": 0, "torch": 0,
    "models": 1, "losses": 1, "eval": 1,
    "convert": 2,
    "factory": 3,
    "train": 4, "predict": 4, "convert.to_hf": 4,
    "configs": 5, "convert.to_run": 5,
    "proj": 6,
}
# Units of one layer that stay apart: prediction and export build the model through the factory and never
# need the trainer (its data pipeline, optimizer and checkpoint writer).
APART = {("predict", "train"), ("convert.to_hf", "train"), ("convert.to_hf", "predict")}


def _unit(module: str) -> str:
    """xformer_jax.a.b.c -> "a.b" if LAYERS names it, else "a" (the package itself -> "")."""
    parts = module.split(".")[1:]
    return ".".join(parts[:2]) if ".".join(parts[:2]) in LAYERS else (parts[0] if parts else "")


def _project_imports(tree: ast.AST):
    """(line, imported unit, at module level) of every import of an xformer_jax module."""
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xformer_jax":
            names = ([f"{node.module}.{a.name}" for a in node.names] if node.module.count(".") < 2
                     else [node.module])  # `from xformer_jax(.pkg) import x`: x may be a unit of its own
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "xformer_jax"]
        else:
            continue
        for name in names:
            yield node.lineno, _unit(name), id(node) in top


def _module_unit(path: pathlib.Path) -> str:
    return _unit(".".join(("xformer_jax",) + path.relative_to(PACKAGE).with_suffix("").parts))


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_unit_has_a_layer():
    units = {_module_unit(p) for p in MODULES}
    assert units == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_and_sit_at_module_level(path):
    unit = _module_unit(path)
    for line, imported, at_top in _project_imports(ast.parse(path.read_text())):
        where = f"{path.relative_to(PACKAGE.parent)}:{line}"
        assert at_top, f"{where} imports xformer_jax.{imported} inside a function"
        assert LAYERS[imported] <= LAYERS[unit], \
            f"{where}: {unit} (layer {LAYERS[unit]}) imports {imported} (layer {LAYERS[imported]}), a layer above it"
        assert (unit, imported) not in APART, f"{where}: {unit} imports {imported}, which it is kept apart from"
