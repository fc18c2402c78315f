"""The emoji data set: Unicode's list parsed, each sequence rendered as one glyph or left out, the
cache equal to a fresh render, the documented count, a missing font refused in one line, and a
few training steps through the command line."""

import numpy as np
import pytest
import torch

from helpers import needs_font, TINY
from ddpm.cli import main
from ddpm.data.emoji import FONT, emoji_sequences, load_emoji, render


# emoji-test.txt's own format: groups, then one line per sequence with its status
SMALL_LIST = """# group: Smileys & Emotion
# subgroup: face-smiling
1F600                                                  ; fully-qualified     # 😀 E1.0 grinning face
263A FE0F                                              ; fully-qualified     # ☺️ E0.6 smiling face
263A                                                   ; unqualified         # ☺ E0.6 smiling face
# group: Component
1F3FB                                                  ; component           # 🏻 E1.0 light skin tone
# group: People & Body
1F44D 1F3FD                                            ; fully-qualified     # 👍🏽 E1.0 thumbs up: medium skin tone
1F468 200D 1F469 200D 1F467                            ; fully-qualified     # 👨‍👩‍👧 E2.0 family: man, woman, girl
# group: Flags
1F1EB 1F1F7                                            ; fully-qualified     # 🇫🇷 E2.0 flag: France
"""


@pytest.fixture
def small_list(tmp_path, monkeypatch):
    path = tmp_path / "emoji-test.txt"
    path.write_text(SMALL_LIST, encoding="utf-8")
    monkeypatch.setenv("DDPM_EMOJI_TEST", str(path))
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    return path


def test_the_list_keeps_the_fully_qualified_sequences_and_their_groups(small_list):
    sequences, groups = emoji_sequences(small_list)
    assert sequences == ["\U0001F600", "\u263A\uFE0F", "\U0001F44D\U0001F3FD", "\U0001F468\u200D\U0001F469\u200D\U0001F467",
                         "\U0001F1EB\U0001F1F7"]
    assert groups == ["Smileys & Emotion"] * 2 + ["People & Body"] * 2 + ["Flags"]


@needs_font
def test_each_sequence_is_one_glyph_on_white_or_left_out():
    # the last is two emoji side by side: the font has no single glyph for it
    images, kept = render(["\U0001F600", "\U0001F1EB\U0001F1F7", "\U0001F44D\U0001F3FD", "\U0001F600\U0001F600"], 32,
                          FONT, progress=False)
    assert images.shape == (3, 3, 32, 32) and images.dtype == np.uint8 and kept == [0, 1, 2]
    assert (images[:, :, 0, 0] == 255).all()  # composited on white, corners included
    assert all(image.std() > 20 for image in images)  # a drawing, not a blank square
    assert not np.array_equal(images[0], images[2])


@needs_font
def test_the_cache_equals_a_fresh_render(small_list, tmp_path):
    first = load_emoji(tmp_path, 16)
    assert first.images.shape == (5, 3, 16, 16) and first.images.dtype == torch.uint8
    assert first.labels.tolist() == [0, 0, 1, 1, 2]
    assert len(list((tmp_path / "cache").glob("emoji-16px-*.npz"))) == 1
    cached = load_emoji(tmp_path, 16)
    for path in (tmp_path / "cache").glob("*.npz"):
        path.unlink()
    fresh = load_emoji(tmp_path, 16)
    assert torch.equal(first.images, cached.images) and torch.equal(first.images, fresh.images)


@needs_font
def test_the_whole_set_has_the_documented_count(tmp_path, monkeypatch):
    """Noto Color Emoji 2.042 (Debian 12) joins 3,655 of Unicode 15.0's fully-qualified sequences
    into one glyph: every one. At 32 px, in 9 groups; rendering them takes about 4 s."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    data = load_emoji(tmp_path)
    assert data.images.shape == (3655, 3, 32, 32) and data.images.dtype == torch.uint8
    assert sorted(data.labels.unique().tolist()) == list(range(9))


def test_a_missing_font_is_one_line_and_exit_2(small_list, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DDPM_EMOJI_FONT", str(tmp_path / "no-font.ttf"))
    out = tmp_path / "run"
    assert main(["train", "--data", "emoji", "--out", str(out), "--max-steps", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "install the Debian package fonts-noto-color-emoji" in err, err
    assert not out.exists()


@needs_font
def test_emoji_train_through_the_command_line(small_list, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", "emoji", "--image-size", "16", "--out", str(out), "--max-steps", "3", *TINY,
                 "--classes", "3"]) == 0
    assert main(["sample", "--run", str(out), "--n", "3", "--steps", "3", "--device", "cpu"]) == 0
    with np.load(out / "samples.npz") as samples:
        assert samples["arr_0"].shape == (3, 16, 16, 3)


@needs_font
def test_fid_reference_images_are_rendered_at_the_asked_size_not_upsampled(small_list, tmp_path):
    """The reference of a 64-pixel run is the set rendered at 64, as training reads it, not the
    32-pixel render enlarged."""
    from ddpm.evaluation.fid import reference_features

    class MeanColours:  # stands in for Inception: one feature row per image, its pixels' values
        def features(self, images, progress=True, desc=""):
            return images.flatten(1).double().numpy()

    features = reference_features("emoji", str(tmp_path), 16, None, MeanColours(), progress=False)
    rendered = load_emoji(tmp_path, 16).images.flatten(1).double().numpy()
    assert sorted(map(tuple, features)) == sorted(map(tuple, rendered))
