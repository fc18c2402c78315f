"""The package's shape: layers that import only downwards, no import cycle, and a torch-free edge.

Layers, from the bottom up (a module may import its own layer's modules and those below). A module
belongs to the layer of the longest dotted prefix listed for it, so that a torch-free helper lives
in the package whose layer it serves (the machine's speed with runtime, the atomic write with
storage) and still sits below the configuration that reads it:
    errors, registry,                 the error types and the registries of specs; the names, settings
    config.names, config.settings,    declared once and option sets; the atomic write, the stop signals,
    config.options, storage.atomic,   the machine's matmul rate, and what a folder of images holds
    runtime.signals, runtime.speed,
    data.folders
    config                            the schema, the students' sections, the presets, the recipe (no torch)
    models                            the networks
    diffusion                         schedules, forward process and loss, guidance, samplers
    data                              images in memory and data sets by name
    runtime                           devices and torchrun
    storage                           the run directory, checkpoints, image files
    factory                           config -> network, diffusion, optimiser
    pipeline, editor                  trained model -> images; the edits of a pipeline
    evaluation                        FID, KID, sweeps, the FID history
    pictures                          pictures of each stage, the report
    serve                             the interactive page and its server
    training                          the loop and its helpers
    cli, __main__                     the command line
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import ddpm

LAYERS = [("errors", "registry", "config.names", "config.settings", "config.options", "storage.atomic",
           "runtime.signals", "runtime.speed", "data.folders"),
          ("config",), ("models",), ("diffusion",), ("data",), ("runtime",), ("storage",), ("factory",), ("pipeline", "editor"),
          ("evaluation",), ("pictures",), ("serve",), ("training",), ("cli", "__main__")]
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
    """The layer of the longest prefix in LAYERS that names `module` (ddpm.config.names: config.names)."""
    dotted = module.split(".", 1)[1]
    prefixes = [(len(prefix), i) for i, names in enumerate(LAYERS) for prefix in names
                if dotted == prefix or dotted.startswith(prefix + ".")]
    if not prefixes:
        raise AssertionError(f"{module} has no layer: add it, or a package above it, to LAYERS")
    return max(prefixes)[1]


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
    for module in _modules():
        _layer(module)


def test_the_schema_holds_no_measurement_and_no_long_function():
    """config/schema.py is the schema: it imports no measurement (speed, the recipe, what a folder
    holds), and its rules between fields stay short; what was measured lives in config/recipe.py."""
    config = _modules()["ddpm.config.schema"]
    measured = {"ddpm.runtime.speed", "ddpm.config.recipe", "ddpm.data.folders"}
    assert not _imports("ddpm.config.schema", config, _modules()) & measured
    functions = [node for node in ast.walk(ast.parse(config.read_text())) if isinstance(node, ast.FunctionDef)]
    long = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in functions
            if node.end_lineno - node.lineno + 1 > 40]
    assert not long, long


def _torch_free(code: str) -> None:
    script = f"import sys\n{code}\nassert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=120)


def test_the_config_and_the_command_line_start_without_torch():
    _torch_free("import ddpm.config, ddpm; ddpm.config.Config().validate()")
    _torch_free("from ddpm.config.presets import load_preset; load_preset('cifar10-ddpm').validate()")
    _torch_free("from ddpm.config.recipe import compose_config; compose_config(overrides={'data.name': 'emoji'}).validate()")
    _torch_free("from ddpm.cli import main\nassert main(['presets']) == 0")
    _torch_free("from ddpm.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")


def test_the_public_names_resolve_lazily():
    assert ddpm.__version__ != "0+unknown"  # installed: the version comes from the package metadata
    for name in ddpm.__all__:
        assert getattr(ddpm, name) is not None


def test_docs_architecture_lists_every_module():
    """docs/architecture.md names every module by its path under src/ddpm, a package's __init__ but the
    top one excepted (their docstrings say what the package holds)."""
    text = (Path(__file__).parent.parent / "docs" / "architecture.md").read_text()
    paths = [path.relative_to(PACKAGE).as_posix() for path in sorted(PACKAGE.rglob("*.py"))]
    missing = [path for path in paths if (path == "__init__.py" or not path.endswith("/__init__.py"))
               and f"`{path}`" not in text]
    assert not missing, f"docs/architecture.md does not list {', '.join(missing)}"


def test_no_test_module_imports_another():
    """What tests share lives in tests/helpers.py (and conftest.py's fixtures): a test module that
    imported another would run that module's tests' set-up and tie the two together."""
    tests = Path(__file__).parent
    modules = {path.stem for path in tests.glob("*.py")}
    found = []
    for path in sorted(tests.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and not node.level else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.name} imports {name}" for name in names
                      if name in modules and (name.startswith("test_") or name == "conftest")]
    assert not found, found


def test_the_top_level_holds_what_a_user_opens_first_and_no_module_is_long():
    """src/ddpm's own .py files are the entry points (the Pipeline and its Editor, the registries, the
    factory, the errors, __init__ and __main__): everything else lives in a package named for what it
    holds. A module over 450 lines holds more than one idea."""
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= 7, top
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 450}
    assert not long, long


def test_the_pipeline_loads_plans_and_draws_and_no_more():
    """At most 15 public members, its attributes counted: the edits are the Editor's."""
    import torch

    from ddpm import Config, Diffusion, Pipeline, make_schedule

    pipe = Pipeline(torch.nn.Identity(), Diffusion(make_schedule("cosine", 10), "eps"), Config())
    public = sorted(name for name in dir(pipe) if not name.startswith("_"))
    assert len(public) <= 15, public


def test_every_leaf_imports_first_in_a_fresh_process():
    """A leaf inside a package runs the package's __init__ first: importing it before anything else
    must not meet a module half-initialised (ddpm.registry -> config.options -> config/__init__ ->
    config.schema -> ddpm.registry was such a cycle, which no module-level import showed)."""
    for module in ["ddpm.registry", *(f"ddpm.{name}" for name in LAYERS[0] if "." in name)]:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"import {module}: {done.stderr.strip().splitlines()[-1]}"


def test_a_student_methods_name_is_written_in_the_registry_alone():
    """No module branches on a student method by its name: each names its spec's facts and code, so a
    new method is its own module and one registration (registry.STUDENTS)."""
    from ddpm.registry import STUDENTS

    names = set(STUDENTS.names())
    found = [f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.name != "registry.py" for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and node.value in names]
    assert not found, found
