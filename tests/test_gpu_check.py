"""benchmarks/gpu_check.py stays runnable for the day a GPU is lent: its dry run takes every path on
the CPU with tiny shapes, and a failing check is reported while the others still run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu_check  # noqa: E402

CHECKS = ["device", "training", "cpu_match", "bf16_follows_fp32", "sampling_images_per_s", "torchrun", "consistency",
          "default_budget"]


def test_the_dry_run_takes_every_path(tmp_path):
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--dry-run", "--out", str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["checks"]) == CHECKS and report["ok"]
    training = report["checks"]["training"]["result"]
    assert set(training) == {"fp32", "bf16"}
    assert all(r["loss_last"] < r["loss_first"] for r in training.values())
    assert report["checks"]["cpu_match"]["result"]["max_grad_difference"] <= gpu_check.MATCH_TOLERANCE
    assert report["checks"]["torchrun"]["result"]["steps_logged"][-1] == 8


def test_a_failing_check_is_reported_and_the_rest_still_run(tmp_path, monkeypatch):
    for name in ("check_training", "check_cpu_match", "check_bf16_follows_fp32", "check_torchrun", "check_consistency",
                 "check_default"):
        monkeypatch.setattr(gpu_check, name, lambda *args: {})
    monkeypatch.setattr(gpu_check, "check_device", lambda *args: {"bf16_matmul_tflops": 1.0})

    def broken(*args):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(gpu_check, "check_sampling", broken)
    report = gpu_check.run_checks(gpu_check.Plan.dry(), tmp_path)
    assert not report["ok"] and list(report["checks"]) == CHECKS
    assert report["checks"]["sampling_images_per_s"]["error"] == "RuntimeError: CUDA error: an illegal memory access"
    assert all(report["checks"][name]["ok"] for name in CHECKS if name != "sampling_images_per_s")
    monkeypatch.setattr(gpu_check, "run_checks", lambda plan, work: {"ok": False, "checks": {}})
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "r.json")]) == 1


def test_without_a_gpu_it_says_to_use_the_dry_run(capsys):
    if gpu_check.torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_check.main(["--out", "unused.json"]) == 2
    assert "--dry-run" in capsys.readouterr().err
