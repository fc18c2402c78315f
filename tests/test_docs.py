"""Every code block of the README and of docs/ runs, with tiny budgets, so that none of them can rot.

- ```python blocks run in order, one namespace per file, in a fresh folder;
- ```sh blocks run line by line: each `ddpm ...` line through the command line's own entry point,
  and it must exit 0; `make demo` / `make test` and activating .venv are the set-up that CI itself
  runs, so they are only recognised; torchrun lines run with `-m slow`;
- other fences (```text) are not code.

The budgets are cut by the substitutions in `_tiny`: minutes of training become a few steps,
sample counts become 4, sampling takes 5 steps, and FID's reference is 8 images in a private cache.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ddpm.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "book").glob("*.md"))]
SETUP = ("make demo", "make test", "make docs", ". .venv/bin/activate")


def blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of each fenced block; the book's ```python exec="on" blocks run when the site is
    built (markdown-exec; tests/test_book.py), so they are left to it."""
    found = re.findall(r"^```(\w*)([^\n]*)\n(.*?)^```[ \t]*$", path.read_text(), flags=re.S | re.M)
    return [(language, code) for language, attributes, code in found if "exec=" not in attributes]


def _tiny(line: str) -> str:
    """The same command or code, with a budget that takes seconds."""
    if line.startswith("ddpm distill"):
        line = re.sub(r"--max-(minutes|steps) [\d.]+", "--max-steps 2", line)
    if "--resume" in line:
        line = re.sub(r"--max-(minutes|steps) [\d.]+", "--max-steps 4", line)
    elif " train " in f"{line} " or " train-autoencoder " in line:
        line = re.sub(r" --max-(minutes|steps) [\d.]+", "", line) + " --max-steps 2 --set train.grid_size=4"
    # emoji render and encode for minutes; 16x16 digits (an f = 4 autoencoder still fits) take seconds
    line = re.sub(r"--data emoji( --image-size \d+)?", "--data digits --image-size 16", line)
    if "--autoencoder own" in line:  # its autoencoder's share of the minutes, as steps
        line += " --set latent.own_steps=2 --set latent.own_widths=[8,16]"
    line = re.sub(r'"train\.max_(minutes|steps)": [\d.]+', '"train.max_steps": 2, "train.grid_size": 4', line)
    line = re.sub(r"steps=\d+", "steps=5", line)
    line = re.sub(r"--n \d+", "--n 4", line)
    line = re.sub(r"(--steps) [\d,]+", r"\1 2" if line.startswith("ddpm sweep") else r"\1 5", line)
    sampling = ("ddpm sample", "ddpm eval", "ddpm edit", "ddpm show trajectory", "ddpm show progression", "ddpm show edits")
    if line.startswith(sampling) and "--steps" not in line:
        line += " --steps 5"
    if line.startswith(("ddpm eval", "ddpm sweep")) or line.startswith("ddpm ema") and "--sweep" in line:
        line += " --ref-n 8"
    return line


def _commands(code: str) -> list[str]:
    return [line.split(" #")[0].strip() for line in code.splitlines() if line.strip() and not line.startswith("#")]


def test_every_block_is_python_sh_or_text():
    for path in DOCS:
        for language, _ in blocks(path):
            assert language in ("python", "sh", "text"), f"{path.name}: a ```{language} block; use python, sh or text"


@pytest.fixture
def registries():
    """What a document registers (docs/architecture.md's recipes) is gone after it."""
    from ddpm.registry import DATASETS, NETWORKS, OBJECTIVES, SAMPLERS, STUDENTS

    saved = {registry: dict(registry._specs) for registry in (SAMPLERS, OBJECTIVES, NETWORKS, DATASETS, STUDENTS)}
    yield
    for registry, specs in saved.items():
        registry._specs = specs


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_blocks_run(path, tmp_path, monkeypatch, registries):
    from helpers import write_cifar

    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path / "data")  # the real format, a few images: what docs/diffusers.md evaluates against
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    namespace: dict = {}
    for language, code in blocks(path):
        if language == "python":
            exec(compile(_tiny(code), f"{path.name} (python block)", "exec"), namespace)
        elif language == "sh":
            for command in _commands(code):
                if command.startswith(SETUP) or command.startswith("torchrun"):
                    continue  # set-up that CI itself runs; torchrun: test_torchrun_blocks_run
                assert command.startswith("ddpm "), f"{path.name}: a shell line that is not ddpm: {command}"
                argv = shlex.split(_tiny(command))[1:]
                assert main([*argv, *(["--device", "cpu"] if argv[0] not in ("show", "export", "import", "ema") else [])]) == 0, command


@pytest.mark.slow
def test_torchrun_blocks_run(tmp_path):
    """torchrun lines with 2 CPU processes instead of 4 GPUs."""
    for path in DOCS:
        for language, code in blocks(path):
            for command in _commands(code) if language == "sh" else []:
                if command.startswith("torchrun"):
                    command = _tiny(command).replace("--nproc_per_node=4", "--nproc_per_node=2")
                    argv = [sys.executable, "-m", "torch.distributed.run", *shlex.split(command)[1:], "--device", "cpu"]
                    subprocess.run(argv, cwd=tmp_path, check=True, timeout=600)
