"""The architecture, checked: layers point one way, no import cycles (not even inside functions),
and importing cifar_tune changes nothing in the process."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cifar_tune"

# Top to bottom; a module may import its own layer or any layer below it, never one above.
LAYERS = [
    ("cli", ["cifar_tune", "cifar_tune.orchestrator.cli"]),  # the package root is the API facade
    ("orchestrator", ["cifar_tune.orchestrator"]),
    ("analysis", ["cifar_tune.analysis"]),
    ("bench/export", ["cifar_tune.bench", "cifar_tune.export", "cifar_tune.export_worker"]),
    ("trainables", ["cifar_tune.trainables", "cifar_tune.train", "cifar_tune.graphed_step"]),
    ("base", ["cifar_tune.data", "cifar_tune.models", "cifar_tune.precision", "cifar_tune.config", "cifar_tune.storage",
              "cifar_tune.search", "cifar_tune.names", "cifar_tune.errors", "cifar_tune.tracking", "cifar_tune.run_logger",
              "cifar_tune.wandb_setup",
              "cifar_tune.faults", "cifar_tune.compat", "cifar_tune.checkpoints",
              "cifar_tune.energy", "cifar_tune.machine", "cifar_tune.meters", "cifar_tune.variants"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> int:
    """Index into LAYERS (0 = top) of the most specific prefix that names the module."""
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return rank


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """Import nodes under `if TYPE_CHECKING:`: they name types for annotations and never run."""
    return {node for block in ast.walk(tree)
            if isinstance(block, ast.If) and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
            for stmt in block.body for node in ast.walk(stmt)}


def _imports(path: Path, module: str, known: set[str], runtime_only: bool = False) -> set[str]:
    """cifar_tune modules imported anywhere in the file, function bodies included (with
    runtime_only, leaving out the imports under `if TYPE_CHECKING:`)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if node in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cifar_tune"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "cifar_tune":
                continue
            for alias in node.names:  # `from cifar_tune import names` imports the module cifar_tune.names
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found - {module}


def _graph(runtime_only: bool = False) -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, set(modules), runtime_only) for name, path in modules.items()}


def test_layers_point_one_way() -> None:
    wrong = [f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})"
             for a, targets in _graph().items() for b in targets if _layer(b) < _layer(a)]
    assert not wrong, "imports of a higher layer:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    graph = _graph(runtime_only=True)
    # A package's __init__ re-exporting its submodules is not a cycle: Python imports a parent
    # package before its children, never the other way round.
    edges = {a: {b for b in targets if not a.startswith(b + ".")} for a, targets in graph.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


DOCSTRING_LINES = 15  # a module's contract in a few lines; the narrative lives in docs/


def test_every_module_has_a_docstring_saying_what_it_owns() -> None:
    docstrings = {name: ast.get_docstring(ast.parse(path.read_text())) for name, path in _modules().items()}
    missing = [name for name, doc in docstrings.items() if not doc]
    assert not missing, missing
    long = {name: len(doc.splitlines()) for name, doc in docstrings.items() if doc and len(doc.splitlines()) > DOCSTRING_LINES}
    assert not long, f"module docstrings over {DOCSTRING_LINES} lines (move the narrative to docs/): {long}"


SNAPSHOT = textwrap.dedent("""
    import json, logging, os, signal, sys, warnings
    # Third-party libraries first: some add warning filters of their own when imported.
    import torch, torchvision, ray, ray.tune, ray.air.integrations.wandb, pandas, matplotlib, matplotlib.figure
    import scipy.stats, sympy, onnx, onnxruntime, yaml, pydantic

    def state():
        return {
            "env": dict(os.environ),
            "torch": [torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                      torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                      torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(),
                      torch.get_num_threads(), str(torch.get_default_dtype())],
            "ray_initialized": ray.is_initialized(),
            "pyplot_loaded": "matplotlib.pyplot" in sys.modules,
            "matplotlib_backend": matplotlib.rcParams._get("backend"),
            "warning_filters": len(warnings.filters),
            "root_log_handlers": len(logging.getLogger().handlers),
            "sigint": str(signal.getsignal(signal.SIGINT)),
        }

    before = state()
    import importlib, pkgutil, cifar_tune
    for info in pkgutil.walk_packages(cifar_tune.__path__, "cifar_tune."):
        importlib.import_module(info.name)
    after = state()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    if "env" in changed:
        b, a = changed["env"]
        changed["env"] = {k: (b.get(k), a.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    print(json.dumps(changed, default=str))
""")


def test_importing_every_module_changes_nothing_in_the_process(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a" * 32)  # a machine that once ran `ray start`
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_", "TUNE_"))}
    result = subprocess.run([sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, timeout=300,
                            env={**env, "HOME": str(home)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}


def test_ray_imported_first_then_cifar_tune_then_a_local_ray(tmp_path: Path) -> None:
    """The notebook order that used to fail with InvalidAuthToken on a machine holding a token."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("b" * 32)
    script = textwrap.dedent("""
        import ray
        import cifar_tune.models, cifar_tune.orchestrator.experiment
        ray.init(num_cpus=1, include_dashboard=False)
        print("RESULT", ray.get(ray.remote(lambda: 41 + 1).remote()))
        ray.shutdown()
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TUNE_"))}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**env, "HOME": str(home)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RESULT 42" in result.stdout


def test_old_module_paths_unpickle_while_lent_and_only_then() -> None:
    """Experiments written before 0.2 pickled config objects under cifar_tune.orchestrator.config."""
    import pickle

    from cifar_tune.compat import old_module_paths
    from cifar_tune.config import ExperimentConfig

    config = ExperimentConfig(name="old")
    # Protocol 0 names a class as text ("c<module>\n<name>\n"), so the path can be swapped in place.
    old = pickle.dumps(config, protocol=0).replace(b"ccifar_tune.config\n", b"ccifar_tune.orchestrator.config\n")
    assert b"cifar_tune.orchestrator.config" in old
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(old)
    with old_module_paths():
        assert pickle.loads(old) == config
    assert "cifar_tune.orchestrator.config" not in sys.modules


def test_an_export_worker_imports_only_what_exporting_needs() -> None:
    """Ray imports a task's module in every worker that runs it, and a study starts one export
    worker per slot: the export tasks' module must not bring Ray Tune, Ray Train (a Checkpoint
    object would) or pandas, about 0.8 CPU-s more per worker (benchmarks/RESULTS.md, "Scale")."""
    from cifar_tune.orchestrator.export_hook import export_on_cpu, export_on_gpu, time_on_node

    assert {task._function.__module__ for task in (export_on_cpu, export_on_gpu, time_on_node)} == {"cifar_tune.export_worker"}
    script = ("import json, sys, ray, cifar_tune.export_worker; "
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'pandas' "
              "or m.startswith(('ray.tune', 'ray.train', 'ray.data')))))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
