"""`ddpm report`: one self-contained HTML page per run, checked as text and in a real browser."""

import base64
import json
import re
import shutil
import subprocess

import pytest

from helpers import tiny_config
from ddpm import train
from ddpm.cli import main
from ddpm.evaluation.history import append_eval_history
from ddpm.storage.files import plot_ema_sweep, plot_sweep
from ddpm.pictures.report import SECTIONS

IMG = re.compile(r'<img src="([^"]*)"')


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory):
    config = tiny_config(**{"train.max_steps": 8, "train.checkpoint_every": 4, "train.sample_every": 4})
    return train(config, tmp_path_factory.mktemp("report") / "run", progress=False).path


@pytest.fixture(scope="module")
def full_run(bare_run, tmp_path_factory):
    """The same run with every optional section's data: pictures, FID history and a sweep."""
    run = tmp_path_factory.mktemp("report-full") / "run"
    shutil.copytree(bare_run, run)
    assert main(["show", "progression", "--run", str(run), "--n", "4", "--device", "cpu"]) == 0
    assert main(["show", "trajectory", "--run", str(run), "--n", "2", "--frames", "3", "--device", "cpu"]) == 0
    assert main(["show", "edits", "--run", str(run), "--steps", "3", "--device", "cpu"]) == 0
    for fid in (212.5, 180.25):
        append_eval_history(run, {"step": 8, "sampler": "ddpm", "steps": 4, "samples": 100, "reference": 500,
                                   "data": "mnist5k", "fid": fid, "kid": 0.1})
    rows = [{"sampler": s, "steps": k, "nfe": k, "fid": 100.0 / k, "kid": 0.0, "seconds": 1.0, "samples": 10}
            for s in ("ddim", "ddpm") for k in (5, 10)]
    (run / "sweep.csv").write_text("sampler,steps,nfe,fid,kid,seconds,samples\n"
                                   + "".join(",".join(str(r[f]) for f in r) + "\n" for r in rows))
    plot_sweep(rows, run / "sweep.png")
    lengths = [{"weights": "classic", "sigma_rel": None, "step": 8, "fid": 90.0, "kid": 0.0, "samples": 10},
               {"weights": "post-hoc", "sigma_rel": 0.1, "step": 8, "fid": 80.0, "kid": 0.0, "samples": 10}]
    (run / "ema").mkdir()
    (run / "ema" / "sweep.csv").write_text("weights,sigma_rel,step,fid,kid,samples\nclassic,,8,90.0,0.0,10\n"
                                          "post-hoc,0.1,8,80.0,0.0,10\n")
    plot_ema_sweep(lengths, run / "ema" / "sweep.png")
    return run


def _sections(html: str) -> list[str]:
    return re.findall(r'<section id="(\w+)">', html)


def test_report_holds_the_sections_whose_data_exists(bare_run, full_run, tmp_path):
    assert main(["report", "--run", str(bare_run)]) == 0
    bare = (bare_run / "report.html").read_text()
    assert _sections(bare) == ["config", "loss", "grid"]

    out = tmp_path / "elsewhere" / "full.html"
    assert main(["report", "--run", str(full_run), "--out", str(out)]) == 0
    full = out.read_text()
    assert _sections(full) == [s for s in SECTIONS if s != "autoencoder"]  # a diffusion run; test_latent has the other
    assert "180.25" in full and "212.5" in full  # the FID history as a table
    assert "objective: v" in full  # the config, verbatim
    # Self-contained: every image is an inline PNG or GIF that decodes, nothing refers outside the file.
    sources = IMG.findall(full)
    assert len(sources) == 8  # loss, grid, progression, trajectory PNG and GIF, edits, sweep, post-hoc EMA
    for source in sources:
        kind, data = re.fullmatch(r"data:image/(png|gif);base64,(.+)", source).groups()
        assert base64.b64decode(data)[:4] == (b"\x89PNG" if kind == "png" else b"GIF8")
    assert not re.search(r'(src|href)="(?!data:)', full)


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


# ---- in a browser ------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# Injected first into a copy of the report: collects script errors, console errors and failed
# resource loads, then after `load` records which images did not decode into a data attribute.
PROBE = """<script>
window.__problems = [];
window.addEventListener("error", e => window.__problems.push(
    e.target && e.target.tagName ? "failed to load " + e.target.tagName + " " + (e.target.alt || "") : "error: " + e.message), true);
const consoleError = console.error;
console.error = (...args) => { window.__problems.push("console.error: " + args.join(" ")); consoleError(...args); };
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  document.documentElement.setAttribute("data-probe", JSON.stringify({images: images.length, broken, problems: window.__problems}));
});
</script>"""


def _chromium(*arguments: str) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000",
               *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _probe(report, tmp_path) -> dict:
    probed = tmp_path / f"probe-{report.name}"
    probed.write_text(report.read_text().replace("<head>", "<head>" + PROBE, 1))
    dom = _chromium("--dump-dom", probed.as_uri()).stdout
    found = re.search(r"data-probe=\"([^\"]*)\"", dom)
    assert found, dom[:500]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (make test installs it when it can)")
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    report = full_run / "report.html"
    assert main(["report", "--run", str(full_run)]) == 0

    probe = _probe(report, tmp_path)
    assert probe == {"images": 8, "broken": [], "problems": []}

    screenshot = tmp_path / "report-screenshot.png"
    shot = _chromium("--window-size=1200,3000", f"--screenshot={screenshot}", "--enable-logging=stderr", "--v=0",
                     report.as_uri())
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    console = [line for line in shot.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    print(f"screenshot: {screenshot}")

    # The probe can fail: a report with one damaged image is caught.
    damaged = tmp_path / "damaged.html"
    damaged.write_text(re.sub(r'src="data:image/png;base64,[^"]{40}', 'src="data:image/png;base64,AAAA', report.read_text(), count=1))
    probe = _probe(damaged, tmp_path)
    assert len(probe["broken"]) == 1 and probe["problems"], probe
