"""`ddpm edit` and the pipeline's editing methods on a trained (tiny) run: the files they write, the
pixels they must keep, and the inputs they refuse."""

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import trained
from ddpm import Editor, InputError, Pipeline, load_data
from ddpm.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained(tmp_path_factory, "edit", "--max-steps", "2")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A digit, a second digit, a mask filling the right half, and bad inputs."""
    folder = tmp_path_factory.mktemp("files")
    digits = load_data("mnist5k").images
    Image.fromarray(digits[0, 0].numpy()).save(folder / "a.png")
    Image.fromarray(digits[1, 0].numpy()).save(folder / "b.png")
    mask = np.zeros((28, 28), np.uint8)
    mask[:, 14:] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "keep_all.png")
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(folder / "fill_all.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(folder / "small_mask.png")
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(folder / "color.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "big.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def test_the_pipeline_keeps_the_known_pixels_and_returns_the_input_at_strength_0(run_dir):
    edit = Editor(Pipeline.from_run(run_dir, device="cpu"))
    digit = load_data("mnist5k").images[0]
    mask = np.zeros((28, 28), bool)
    mask[10:20, 10:20] = True
    out = edit.inpaint(digit, mask, n=3, resample=2, jump=2)
    keep = torch.from_numpy(~mask).expand(3, 1, 28, 28)
    assert out.shape == (3, 1, 28, 28) and torch.equal(out[keep], digit.expand(3, -1, -1, -1)[keep])
    assert not torch.equal(out[~keep], digit.expand(3, -1, -1, -1)[~keep])
    assert torch.equal(edit.img2img(Image.fromarray(digit[0].numpy()), 0.0, n=2), digit.expand(2, -1, -1, -1))
    x_T = edit.invert(digit.float() / 255)  # a float tensor in [0, 1] is an image too
    assert x_T.shape == (1, 1, 28, 28)
    frames = edit.interpolate(digit, load_data("mnist5k").images[1], frames=4, output="pil")
    assert len(frames) == 4 and frames[0].size == (28, 28)
    for call in (lambda: edit.inpaint(digit, mask, output="numpy"), lambda: edit.img2img(digit, 0.5, output="numpy"),
                 lambda: edit.interpolate(digit, digit, output="numpy")):
        with pytest.raises(InputError, match="unknown output 'numpy'"):
            call()


def test_each_edit_writes_its_picture(run_dir, files, tmp_path):
    run = ["--run", str(run_dir), "--device", "cpu", "--steps", "4"]
    assert main(["edit", "inpaint", *run, "--image", str(files / "a.png"), "--mask", str(files / "mask.png"),
                 "--n", "2", "--resample", "2", "--jump", "2", "--out", str(tmp_path / "inpainted.npz"),
                 "--figure", str(tmp_path / "inpaint.png")]) == 0
    assert main(["edit", "img2img", *run, "--image", str(files / "a.png"), "--strength", "0.5", "--n", "2",
                 "--sampler", "dpm++2m", "--out", str(tmp_path / "edited.png"), "--figure", str(tmp_path / "img2img.png")]) == 0
    assert main(["edit", "invert", *run, "--image", str(files / "a.png"), "--out", str(tmp_path / "x_T.npy")]) == 0
    assert main(["edit", "interpolate", *run, "--a", str(files / "a.png"), "--b", str(files / "b.png"),
                 "--frames", "5", "--out", str(tmp_path / "walk"), "--figure", str(tmp_path / "walk.png")]) == 0
    assert Image.open(tmp_path / "inpaint.png").width > Image.open(tmp_path / "img2img.png").width  # 4 columns, 3
    assert np.load(tmp_path / "x_T.npy").shape == (1, 28, 28)
    assert Image.open(tmp_path / "walk.gif").n_frames == 5


@pytest.mark.parametrize("argv, message", [
    (["inpaint", "--mask", "{f}/small_mask.png"], "the mask is 20x20 but the image is 28x28"),
    (["inpaint", "--mask", "{f}/keep_all.png"], "this one keeps every pixel"),
    (["inpaint", "--mask", "{f}/fill_all.png"], "this one fills every pixel"),
    (["inpaint", "--mask", "{f}/mask.png", "--sampler", "heun"], "inpainting takes ddpm or ddim steps"),
    (["inpaint", "--mask", "{f}/broken.png"], "cannot read mask"),
    (["img2img", "--strength", "1.5"], "--strength must be in [0, 1]"),
    (["img2img", "--strength", "0.5", "--image", "{f}/color.png"], "is a color image but the run makes grayscale"),
    (["img2img", "--strength", "0.5", "--image", "{f}/big.png"], "the image is 1x32x32"),
    (["img2img", "--strength", "0.5", "--image", "{f}/broken.png"], "cannot read image"),
    (["invert", "--out", "{t}/x_T.png"], "--out must name a .npy file"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, run_dir, files, tmp_path, capsys):
    kind, *rest = [a.format(f=files, t=tmp_path) for a in argv]
    if "--image" not in rest:
        rest += ["--image", str(files / "a.png")]
    if "--out" not in rest:
        rest += ["--out", str(tmp_path / "out.png")]
    before = sorted(p.name for p in run_dir.rglob("*"))
    assert main(["edit", kind, "--run", str(run_dir), "--device", "cpu", "--steps", "3", *rest]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in run_dir.rglob("*")) == before


def test_an_edits_results_are_the_next_edits_input(run_dir, files, tmp_path):
    """--out writes the results themselves: a .npz that the next edit (and ddpm eval) reads, a PNG grid,
    or one PNG per image; the labelled picture is --figure's. Two inpaintings of a digit, then an
    img2img of each at strength 0, which must return them pixel for pixel."""
    run = ["--run", str(run_dir), "--device", "cpu", "--steps", "4"]
    assert main(["edit", "inpaint", *run, "--image", str(files / "a.png"), "--mask", str(files / "mask.png"),
                 "--n", "2", "--out", str(tmp_path / "first.npz")]) == 0
    first = np.load(tmp_path / "first.npz")["arr_0"]
    assert first.shape == (2, 28, 28, 1) and first.dtype == np.uint8
    digit = np.asarray(Image.open(files / "a.png"))
    assert np.array_equal(first[:, :, :14, 0], np.broadcast_to(digit[:, :14], (2, 28, 14)))  # the kept half
    assert main(["edit", "img2img", *run, "--image", str(tmp_path / "first.npz"), "--strength", "0", "--n", "1",
                 "--out", str(tmp_path / "second")]) == 0
    second = sorted((tmp_path / "second").iterdir())
    assert [p.name for p in second] == ["000000.png", "000001.png"]
    assert all(np.array_equal(np.asarray(Image.open(p)), first[k, :, :, 0]) for k, p in enumerate(second))
    assert main(["eval", "--samples", str(tmp_path / "first.npz"), "--ref-n", "4", "--device", "cpu"]) == 0
    for bad, message in ((["--out", str(tmp_path / "x.jpg")], "--out must name a .npz"),
                         (["--out", str(tmp_path / "y.npz"), "--figure", str(tmp_path / "f.gif")],
                          "--figure must name a .png")):
        assert main(["edit", "img2img", *run, "--image", str(files / "a.png"), "--strength", "0.5", *bad]) == 2
        assert not (tmp_path / "x.jpg").exists() and not (tmp_path / "y.npz").exists()
