"""The package boundaries: plankton_data works without torch, plankton_train uses only plankton_data's public
layers, plankton_train's own layers point one way, and its CLI starts without torch.

Imports are read from the source with ``ast`` (imports inside functions count too, except for the cycle test,
which follows only what runs at import time).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "plankton_train"
HEAVY = ("torch", "torchvision", "timm", "lightly")

#: What plankton_train may import from plankton_data: the shared errors and backports, the on-disk format,
#: and the ingest preprocessing, image ops and raw-source readers, IFCB bins included (predict gives raw images
#: and raw IFCB ROIs what ingest gives them).
DATA_API = ("plankton_data.errors", "plankton_data.compat", "plankton_data.format", "plankton_data.ingest.preprocess")
DATA_API_EXACT = ("plankton_data.ingest.sources", "plankton_data.ingest.ops", "plankton_data.ingest.ifcb")
#: The end-to-end demo (plankton_train/demo.py) is the one module that drives plankton_data's pipeline itself:
#: sample archives, ingest, the shard-set builder and verify, by their library API.
DEMO_DATA_API = ("plankton_data.fixtures", "plankton_data.ingest.run", "plankton_data.shardset.build",
                 "plankton_data.audit.verify")  # fmt: skip

#: plankton_train layer -> plankton_train layers it must never import. ``errors`` (and the package root's
#: ``__version__``) are below everything. pretrain.py / finetune.py are the wiring above engine and models.
FORBIDDEN = {
    "errors": {"cli", "engine", "models", "data", "protocol", "pretrain", "finetune", "demo"},
    "data": {"cli", "engine", "models", "protocol", "pretrain", "finetune", "demo"},
    "models": {"cli", "engine", "protocol", "pretrain", "finetune", "demo"},
    "engine": {"cli", "protocol", "pretrain", "finetune", "demo"},
    "pretrain": {"cli", "demo"},
    "finetune": {"cli", "demo"},
    "protocol": {"cli", "demo"},
    "cli": set(),
    "__init__": {"cli", "engine", "models", "data", "protocol", "pretrain", "finetune", "demo"},
    "__main__": set(),  # python -m plankton_train: the CLI's second entry point
    "demo": {"cli"},  # the end-to-end demo: above the protocol, below the CLI
}


def _modules_of(node: ast.AST) -> list[str]:
    """Dotted names an import statement loads (``from pkg import sub`` names the submodule when it is one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
        return []
    base = ROOT.joinpath(*node.module.split("."))
    is_module = [(base / a.name).is_dir() or (base / f"{a.name}.py").is_file() for a in node.names]
    subs = [f"{node.module}.{a.name}" for a, sub in zip(node.names, is_module, strict=True) if sub]
    return subs or [node.module]


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    if not top_level_only:
        return {m for node in ast.walk(tree) for m in _modules_of(node)}
    found: set[str] = set()
    for node in tree.body:  # what runs when the module is imported (type-checking-only imports do not)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            found.update(_modules_of(sub))
    return found


def _layer(path: Path) -> str:
    return path.relative_to(TRAIN).parts[0].removesuffix(".py")


def _train_layer(module: str) -> str | None:
    parts = module.split(".")
    return (parts[1] if len(parts) > 1 else "__init__") if parts[0] == "plankton_train" else None


TRAIN_MODULES = sorted(TRAIN.rglob("*.py"))
_ids = {"ids": lambda p: str(p.relative_to(TRAIN))}


def test_plankton_data_does_not_import_torch():
    code = (
        "import sys, plankton_data, plankton_data.cli.main, plankton_data.ingest, plankton_data.fixtures; "
        "bad = [m for m in ('torch', 'torchvision', 'timm', 'lightly') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("path", TRAIN_MODULES, **_ids)
def test_plankton_train_uses_only_the_public_layers_of_plankton_data(path):
    used = {m for m in _imports(path) if m.split(".")[0] == "plankton_data"}
    exact = DATA_API_EXACT + (DEMO_DATA_API if path == TRAIN / "demo.py" else ())
    wrong = [m for m in used if not (m in exact or any(m == a or m.startswith(a + ".") for a in DATA_API))]
    assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)} from plankton_data"


@pytest.mark.parametrize("path", TRAIN_MODULES, **_ids)
def test_plankton_train_layers_point_one_way(path):
    layer = _layer(path)
    assert layer in FORBIDDEN, f"new top-level module {layer}: give it a row in FORBIDDEN"
    wrong = {_train_layer(m) for m in _imports(path)} & FORBIDDEN[layer]
    assert not wrong, f"{path.relative_to(ROOT)} ({layer}) imports {sorted(wrong)}"


def test_plankton_train_has_no_import_cycles():
    names = {p: ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in TRAIN_MODULES}
    known = set(names.values())
    graph = {names[p]: {m for m in _imports(p, top_level_only=True) if m in known} for p in TRAIN_MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path, module, dep])
            if dep not in state:
                visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_every_model_name_the_cli_offers_is_a_model():
    from plankton_train.models.mae import MODELS
    from plankton_train.models.registry import MODEL_NAMES

    assert tuple(MODELS) == MODEL_NAMES


def _console_script() -> Path:
    script = Path(sys.executable).parent / "plankton-train"
    if not script.is_file():
        pytest.skip(f"{script} is not installed (pip install -e '.[train,dev]')")
    return script


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["pretrain", "--help"], ["finetune", "--help"]])
def test_cli_help_and_version_do_not_import_torch(args):
    code = (
        "import sys; from plankton_train.cli.main import main; sys.argv = ['plankton-train', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code or 0\n"
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('heavy:', bad); sys.exit(1 if bad else code)"
    )
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "heavy: []" in res.stdout, res.stdout + res.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for cmd in ([str(_console_script())], [sys.executable, "-m", "plankton_train"]):
        res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        assert ("plankton-train 0." in res.stdout) if args == ["--version"] else ("Usage: plankton-train" in res.stdout)
