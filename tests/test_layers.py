"""The package's layers, read from its import statements: no module imports one from a layer above it, and
no library function imports a project module (imports inside functions hide the dependency graph)."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "xformer_jax"
# Each top-level unit of xformer_jax and its layer; a unit imports only units of its own layer or below.
LAYERS = {
    "storage": 0, "rundir": 0, "plots": 0, "torch": 0, "data": 0, "profiling": 0, "mini_paper": 0, "script_args": 0,
    "plan": 0,
    "eval": 1, "models": 1, "losses": 1,
    "convert": 2, "generate": 2, "pretrain": 2,
    "train": 3,
    "predict": 4, "hf_import": 4, "hf_export": 4, "configs": 4,
    "recipe": 5,
}


def _unit(module: str) -> str:
    """xformer_jax.a.b -> a (the package itself -> "")."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _project_imports(tree: ast.AST):
    """(line, imported unit, at module level) of every import of an xformer_jax module."""
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xformer_jax":
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "xformer_jax" else [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "xformer_jax"]
        else:
            continue
        for name in names:
            yield node.lineno, _unit(name), id(node) in top


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_unit_has_a_layer():
    units = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in MODULES}
    assert units == set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_down_and_sit_at_module_level(path):
    unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    for line, imported, at_top in _project_imports(ast.parse(path.read_text())):
        where = f"{path.relative_to(PACKAGE.parent)}:{line}"
        assert at_top, f"{where} imports xformer_jax.{imported} inside a function"
        assert LAYERS[imported] <= LAYERS[unit], \
            f"{where}: {unit} (layer {LAYERS[unit]}) imports {imported} (layer {LAYERS[imported]}), a layer above it"
