"""The color data set that works offline: Google's Noto Color Emoji, rendered once and cached.

Debian ships the font (fonts-noto-color-emoji, SIL OFL) and Unicode's list of emoji (unicode-data:
emoji-test.txt, every fully-qualified sequence with its group). Each sequence is drawn with
Pillow's raqm layout engine, so skin tones, flags and ZWJ sequences become one glyph; a sequence
the font cannot join (its glyphs would stand side by side) is left out. Each glyph is composited on
white, cropped to its bounding box, padded to a centered square and resized with a Lanczos
filter. Labels are the Unicode groups (smileys, people, animals, food, travel, activities,
objects, symbols, flags), for class-conditional runs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..storage.atomic import atomic_write
from .folders import cache_dir
from ..errors import InputError
from .imagedata import ImageData

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
GLYPH_SIZE = 109  # the one size of the font's color bitmaps (CBDT)
DEFAULT_SIZE = 32


def emoji_sequences(test_file: Path) -> tuple[list[str], list[str]]:
    """The fully-qualified emoji of emoji-test.txt as strings, and the group of each."""
    sequences, groups, group = [], [], None
    for line in test_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif "; fully-qualified" in line:
            codes = line.split(";", 1)[0].split()
            sequences.append("".join(chr(int(code, 16)) for code in codes))
            groups.append(group)
    return sequences, groups


def render(sequences: list[str], size: int, font_path: Path, progress: bool = True) -> tuple[np.ndarray, list[int]]:
    """uint8 [N, 3, size, size] of the sequences the font draws as one glyph, and their indices."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(font_path), GLYPH_SIZE, layout_engine=ImageFont.Layout.RAQM)
    one_glyph = font.getlength("\U0001F600")
    images, kept = [], []
    for index, sequence in enumerate(tqdm(sequences, desc=f"rendering emoji at {size}px", unit="emoji",
                                          disable=not progress)):
        if font.getlength(sequence) > 1.5 * one_glyph:  # not joined: several glyphs side by side
            continue
        canvas = Image.new("RGBA", (3 * GLYPH_SIZE, 2 * GLYPH_SIZE), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((GLYPH_SIZE // 2, GLYPH_SIZE // 4), sequence, font=font, embedded_color=True)
        box = canvas.getbbox()
        if box is None:
            continue
        glyph = canvas.crop(box)
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        picture = square.convert("RGB").resize((size, size), Image.LANCZOS)
        images.append(np.asarray(picture).transpose(2, 0, 1))
        kept.append(index)
    return np.stack(images), kept


def load_emoji(root: Path, image_size: int | None = None, crop: int | None = None) -> ImageData:
    """Every emoji the font joins into one glyph (about 3,600), at image_size (default 32), with its
    group as the label; rendered once, then read from the cache (DDPM_CACHE, ~/.cache/ddpm)."""
    if crop is not None:
        raise InputError("the emoji data set is rendered square around each glyph; drop --crop")
    size = image_size or DEFAULT_SIZE
    font = Path(os.environ.get("DDPM_EMOJI_FONT", FONT))
    test_file = Path(os.environ.get("DDPM_EMOJI_TEST", EMOJI_TEST))
    if not font.is_file():
        raise InputError(f"the emoji data set needs the Noto Color Emoji font {font}; install the Debian package "
                         "fonts-noto-color-emoji (apt-get install fonts-noto-color-emoji)")
    if not test_file.is_file():
        raise InputError(f"the emoji data set needs Unicode's list of emoji {test_file}; install the Debian package "
                         "unicode-data (apt-get install unicode-data)")
    sequences, groups = emoji_sequences(test_file)
    names = sorted(set(groups), key=groups.index)  # in the file's order
    key = hashlib.sha256(f"{font.stat().st_size}:{test_file.read_bytes()!r}:{size}".encode()).hexdigest()[:12]
    path = cache_dir() / f"emoji-{size}px-{key}.npz"
    if path.is_file():
        with np.load(path) as cached:
            images, kept = cached["images"], cached["kept"].tolist()
    else:
        images, kept = render(sequences, size, font)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, images=images, kept=np.array(kept))

        atomic_write(path, write)
    labels = torch.tensor([names.index(groups[i]) for i in kept])
    return ImageData("emoji", torch.from_numpy(images), labels)
