"""`ddpm eval` on a .npz, a folder of images and a run, with the cached reference reused.

Ten images per set keep the Inception network (about 7 images/s on 2 CPU cores) to seconds.
"""

import json

import numpy as np
import pytest
from PIL import Image

from helpers import trained
import ddpm.evaluation.fid
from ddpm.cli import main
from ddpm.evaluation.history import append_eval_history


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return trained(tmp_path_factory, "eval", "--max-steps", "2")


@pytest.fixture
def counted(monkeypatch, tmp_path):
    """Point the cache at a fresh folder and count the images that go through Inception."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    seen = []
    original = ddpm.evaluation.fid.InceptionFeatures.features

    def features(self, images, *args, **kwargs):
        seen.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(ddpm.evaluation.fid.InceptionFeatures, "features", features)
    return seen


def test_eval_npz_then_folder_reuses_the_cached_reference(tiny_run, tmp_path, counted, capsys):
    npz = tmp_path / "s.npz"
    main(["sample", "--run", str(tiny_run), "--n", "10", "--steps", "3", "--out", str(npz), "--grid", str(tmp_path / "g.png")])
    capsys.readouterr()
    result_path = tmp_path / "fid.json"
    assert main(["eval", "--samples", str(npz), "--data", "mnist5k", "--ref-n", "10", "--json", str(result_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FID ") and "\nKID " in out and "\nprecision " in out
    result = json.loads(result_path.read_text())
    assert result["samples"] == 10 and result["reference"] == 10 and result["fid"] > 0
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert counted == [10, 10]  # reference, then samples
    cache = list((tmp_path / "cache").glob("reference-mnist5k-28px-10.npy"))
    assert len(cache) == 1

    folder = tmp_path / "pngs" / "nested"
    folder.mkdir(parents=True)
    for i, image in enumerate(np.load(npz)["arr_0"]):
        Image.fromarray(image[:, :, 0]).save(folder / f"{i}.png")
    assert main(["eval", "--samples", str(tmp_path / "pngs"), "--ref-n", "10", "--json", str(tmp_path / "f2.json")]) == 0
    assert counted == [10, 10, 10]  # the second call computes only the samples' features
    # The same images read from PNGs give the same FID.
    assert json.loads((tmp_path / "f2.json").read_text())["fid"] == pytest.approx(result["fid"], rel=1e-6)


def test_eval_of_a_run_samples_it_and_records_the_history(tiny_run, counted, capsys):
    assert main(["eval", "--run", str(tiny_run), "--n", "10", "--steps", "3", "--ref-n", "10"]) == 0
    history = (tiny_run / "eval.csv").read_text().splitlines()
    assert history[0].startswith("step,weights,sampler,steps,spacing,eta,variance,guidance,seed,")
    assert history[1].startswith("2,ema,ddpm,3,uniform,,small,,0,10,10,mnist5k,")
    # the raw weights and another seed are told apart from the EMA's default
    assert main(["eval", "--run", str(tiny_run), "--n", "10", "--steps", "3", "--ref-n", "10", "--no-ema",
                 "--seed", "3"]) == 0
    assert (tiny_run / "eval.csv").read_text().splitlines()[2].startswith("2,model,ddpm,3,uniform,,small,,3,10,10,")


def test_an_older_eval_history_keeps_its_rows_under_the_new_columns(tmp_path):
    (tmp_path / "eval.csv").write_text("step,sampler,steps,samples,reference,data,fid,kid\n"
                                       "1985,heun,25,1000,5000,mnist5k,59.6,0.06\n")
    append_eval_history(tmp_path, {"step": 1985, "sampler": "ddim", "steps": 50, "spacing": "uniform", "eta": 0.5,
                                    "samples": 1000, "reference": 5000, "data": "mnist5k", "fid": 32.7, "kid": 0.03})
    append_eval_history(tmp_path, {"step": 1985, "sampler": "ddpm", "steps": 50, "spacing": "uniform",
                                    "variance": "large", "samples": 1000, "reference": 5000, "data": "mnist5k",
                                    "fid": 89.0, "kid": 0.1})
    assert (tmp_path / "eval.csv").read_text().splitlines() == [
        "step,weights,sampler,steps,spacing,eta,variance,guidance,seed,samples,reference,data,fid,kid,precision,recall",
        "1985,,heun,25,,,,,,1000,5000,mnist5k,59.6,0.06,,",
        "1985,,ddim,50,uniform,0.5,,,,1000,5000,mnist5k,32.7,0.03,,",
        "1985,,ddpm,50,uniform,,large,,,1000,5000,mnist5k,89.0,0.1,,",
    ]
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--samples", "/nonexistent.npz"], "does not exist"),
        (["eval"], "give one of --samples"),
        (["eval", "--samples", "{tmp}"], "holds no images"),
        (["eval", "--samples", "{tmp}/bad.npz"], "is not a sample file"),
        (["eval", "--run", "{tmp}", "--data", "imagenet", "--n", "1"], "unknown data set 'imagenet'"),
    ],
)
def test_eval_bad_input(argv, message, tmp_path, capsys):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert message in capsys.readouterr().err


def test_sweep_writes_csv_and_plot(tiny_run, tmp_path, counted, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--run", str(tiny_run), "--samplers", "ddim,heun", "--steps", "2,3", "--n", "4",
                 "--ref-n", "10", "--out", str(out)]) == 0
    rows = (out / "sweep.csv").read_text().splitlines()
    assert rows[0] == "sampler,steps,nfe,fid,kid,seconds,samples"
    assert [r.split(",")[:3] for r in rows[1:]] == [["ddim", "2", "2"], ["ddim", "3", "3"], ["heun", "2", "3"], ["heun", "3", "5"]]
    assert Image.open(out / "sweep.png").size == (600, 400)
    assert counted == [10, 4, 4, 4, 4]  # the reference once, then each pair's samples


def test_sweep_refuses_unknown_sampler_before_work(tiny_run, capsys):
    assert main(["sweep", "--run", str(tiny_run), "--samplers", "ddim,euler", "--n", "4"]) == 2
    assert "unknown sampler 'euler'" in capsys.readouterr().err
