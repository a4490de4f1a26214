"""The package's shape: imports point down, no module but a notebook imports a stage, the config loads
without torch, and the runner's code hash covers every sub-package."""
import ast
import subprocess
import sys
from pathlib import Path

import safety_neurons
from safety_neurons.runner import library_files

PKG = Path(safety_neurons.__file__).resolve().parent
# Lower layers first: a module may import its own layer (within its own sub-package) or any layer below.
LAYERS = [("names", "io"), ("data",), ("config",), ("lm",), ("judges",), ("method",), ("study",), ("stages",),
          ("runner",), ("cli", "__init__"), ("__main__",)]
LAYER = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module(path: Path) -> list[str]:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def import_edges() -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every relative import that runs, lazy ones included."""
    edges = []
    for path in sorted(PKG.rglob("*.py")):
        module = _module(path)
        package = module if path.name == "__init__.py" else module[:-1]
        tree = ast.parse(path.read_text())
        # imports for type annotations only (under `if TYPE_CHECKING:`) never run: they point nowhere
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.ImportFrom) and node.level) or id(node) in typing_only:
                continue
            base = package[: len(package) - (node.level - 1)]
            targets = [base + node.module.split(".")] if node.module else [base + [a.name] for a in node.names]
            edges += [(".".join(module) or "__init__", ".".join(t), node.lineno) for t in targets]
    return edges


def _top(module: str) -> str:
    return module.split(".")[0]


def test_every_module_sits_in_a_layer():
    tops = {_top(".".join(_module(p)) or "__init__") for p in PKG.rglob("*.py")}
    assert tops <= set(LAYER), f"modules outside every layer: {sorted(tops - set(LAYER))}"


def test_imports_point_down():
    upward = [f"{a} imports {b} (line {line})" for a, b, line in import_edges()
              if LAYER[_top(a)] < LAYER[_top(b)] or (LAYER[_top(a)] == LAYER[_top(b)] and _top(a) != _top(b))]
    assert not upward, "\n".join(upward)


def test_no_module_imports_a_stage():
    """Only a stage's own notebook (and its tests) import a stage module; stages share through study/."""
    offending = [f"{a} imports {b} (line {line})" for a, b, line in import_edges()
                 if _top(b) == "stages" and b != "stages" and a != "stages"]
    assert not offending, "\n".join(offending)


def test_config_loads_without_torch():
    code = "import sys, safety_neurons.config as c; c.load_config('smoke'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_library_hash_covers_every_sub_package():
    hashed = {p.relative_to(PKG).as_posix() for p in library_files()}
    for sub in ("lm", "data", "method", "judges", "study", "stages"):
        assert any(name.startswith(f"{sub}/") for name in hashed), sub
    assert "stages/s03_dynamic_patching.py" in hashed and "config.py" in hashed


def test_each_notebook_has_its_stage_module():
    notebooks = [nb for nb in sorted((PKG.parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")) if nb.stem != "00_setup"]
    stages = {p.stem for p in (PKG / "stages").glob("s[0-9][0-9]_*.py")}
    assert {f"s{nb.stem}" for nb in notebooks} == stages
