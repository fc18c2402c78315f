"""MkDocs hooks: the pages generated from the code, the strict checks, and the site's own KaTeX.

- reference/api.md is written from `ddpm.__all__`: one mkdocstrings entry per public name, found at the
  module that defines it. A public name without a docstring stops the build.
- reference/cli.md is written from the command line's own parser (`ddpm.cli.parser()`), so the
  command reference is what `ddpm COMMAND --help` prints.
- KaTeX comes from npm (`make katex` puts it in build/npm) and is copied into the site, so formulas
  render with nothing fetched from elsewhere. Without it the build stops and says how to get it.

The chapters' code runs in markdown-exec at build time; a block that raises fails the strict build.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
KATEX = ROOT / "build" / "npm" / "node_modules" / "katex" / "dist"


def on_config(config):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))  # the chapters' code imports `book` (book.py)
    if not (KATEX / "katex.min.js").is_file():
        raise PluginError(f"KaTeX is missing from {KATEX.relative_to(ROOT)}: run `make katex` (npm) first")
    return config


def on_files(files, config):
    files.append(File.generated(config, "reference/api.md", content=api_page()))
    files.append(File.generated(config, "reference/cli.md", content=cli_page()))
    return files


def on_post_build(config):
    shutil.copytree(KATEX, Path(config["site_dir"]) / "assets" / "katex", dirs_exist_ok=True)


# The modules the book links into, rendered whole (every function with its docstring); the other
# public names are rendered one by one. Each name appears once, so each link has one target.
MODULES = ["diffusion.schedules", "diffusion.process", "diffusion.objectives", "diffusion.samplers",
           "diffusion.gaussian", "diffusion.guidance", "diffusion.editing", "diffusion.consistency",
           "diffusion.weighting", "models.unet", "models.mp_unet", "models.autoencoder", "training.ema",
           "training.progressive", "training.adversarial", "evaluation.metrics"]


def api_page() -> str:
    """Every public name of `ddpm`, each where it is defined; undocumented names are refused."""
    import griffe

    import ddpm

    package = griffe.load("ddpm", search_paths=[str(ROOT / "src")], resolve_aliases=False)
    lines = ["# Python API", "",
             "Generated from the docstrings at build time. Every name `import ddpm` offers (`ddpm.__all__`)",
             "is here; `from ddpm import Pipeline` works for each of them. The modules the book explains",
             "follow whole, with their other functions.", "", "## Public names", ""]
    missing, whole = [], []
    for name in ddpm.__all__:
        value = getattr(ddpm, name)  # a class or function names its module; a registry is where ddpm says
        module = getattr(value, "__module__", None) if callable(value) else None
        module = module.removeprefix("ddpm.") if module else ddpm._EXPORTS[name]
        found = package[f"{module}.{name}"]
        if not (found.docstring and found.docstring.value.strip()):
            missing.append(f"ddpm.{module}.{name}")
        if module in MODULES:
            whole.append(f"`{name}` ([ddpm.{module}](#ddpm.{module}))")
        else:
            lines += [f"::: ddpm.{module}.{name}", ""]
    if missing:
        raise PluginError(f"public names without a docstring: {', '.join(missing)}; document them")
    lines += ["In the modules below: " + ", ".join(whole) + ".", "", "## Modules", ""]
    for module in MODULES:
        lines += [f"::: ddpm.{module}", "    options:", "      heading_level: 3", "      show_root_full_path: true", ""]
    return "\n".join(lines)


def cli_page() -> str:
    """`ddpm --help` and every command's `--help`, as the parser prints them."""
    import argparse
    import os

    from ddpm.cli import parser

    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width; the page has one
    root = parser()
    commands = next(action for action in root._actions if isinstance(action, argparse._SubParsersAction))
    lines = ["# Command line", "", "Generated from the parser at build time: what `ddpm COMMAND --help` prints.", "",
             "```text", root.format_help().rstrip(), "```", ""]
    for name, command in commands.choices.items():
        lines += [f"## ddpm {name}", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(lines)
