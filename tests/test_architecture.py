"""The package's shape: layers that import only downwards, no import cycle, and a torch-free edge.

Layers, from the bottom up (a module may import its own layer's modules and those below):
    errors, names, settings, leaves: the error types, the names, settings declared once, option sets,
    options, registry,       the registries of specs, the atomic write, the machine's matmul rate,
    atomic, speed, folders   and what a folder of images holds
    config, presets, recipe  the schema, the presets, and the measured recipe over them (no torch)
    models                   the networks
    diffusion                schedules, forward process and loss, guidance, samplers
    data                     images in memory and data sets by name
    runtime                  devices and torchrun
    storage                  the run directory, checkpoints, image files
    factory                  config -> network, diffusion, optimiser
    pipeline                 trained model -> images
    evaluation               FID, KID, sweeps, the FID history
    pictures                 pictures of each stage, the report
    serve                    the interactive page and its server
    training                 the loop and its helpers
    cli, __main__            the command line
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ddpm

LAYERS = [("errors", "names", "settings", "options", "registry", "atomic", "signals", "speed", "folders"),
          ("config", "students", "presets", "recipe"), ("models",), ("diffusion",),
          ("data",), ("runtime",), ("storage",), ("factory",), ("pipeline",), ("evaluation",), ("pictures",), ("serve",), ("training",), ("cli", "__main__")]
PACKAGE = Path(ddpm.__file__).parent


def _modules() -> dict[str, Path]:
    """ddpm's modules by dotted name, without the package's own lazy __init__."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        found[".".join(("ddpm", *parts))] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ddpm modules that `name` imports anywhere in its file (function-level imports too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules and c != name)
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_imports_only_its_own_layer_or_below():
    upward = [f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
              for module, targets in import_graph().items() for target in targets if _layer(target) > _layer(module)]
    assert not upward, "\n".join(upward)


def test_there_is_no_import_cycle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path, module, target]))
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_every_module_has_a_layer():
    assert {module.split(".")[1] for module in _modules()} <= {name for names in LAYERS for name in names}


def test_the_schema_holds_no_measurement_and_no_long_function():
    """config.py is the schema: it imports no measurement (speed, the recipe, what a folder holds),
    and its rules between fields stay short; what was measured lives in recipe.py."""
    config = _modules()["ddpm.config"]
    assert not _imports("ddpm.config", config, _modules()) & {"ddpm.speed", "ddpm.recipe", "ddpm.folders"}
    functions = [node for node in ast.walk(ast.parse(config.read_text())) if isinstance(node, ast.FunctionDef)]
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in functions
            if node.end_lineno - node.lineno + 1 > 40]
    assert not long, long


def _torch_free(code: str) -> None:
    script = f"import sys\n{code}\nassert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)


def test_the_config_and_the_command_line_start_without_torch():
    _torch_free("import ddpm.config, ddpm; ddpm.config.Config().validate()")
    _torch_free("from ddpm.presets import load_preset; load_preset('cifar10-ddpm').validate()")
    _torch_free("from ddpm.recipe import compose_config; compose_config(overrides={'data.name': 'emoji'}).validate()")
    _torch_free("from ddpm.cli import main\nassert main(['presets']) == 0")
    _torch_free("from ddpm.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")


def test_the_public_names_resolve_lazily():
    assert ddpm.__version__ != "0+unknown"  # installed: the version comes from the package metadata
    for name in ddpm.__all__:
        assert getattr(ddpm, name) is not None
