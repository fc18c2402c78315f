"""Images in and out of `ddpm serve`: an uploaded file or a drawn mask opened within the limits,
and uint8 tensors as PNG bytes or as a data URL the page shows."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import torch
from PIL import Image

from ..data.imagedata import to_pil
from ..editor import Editor
from ..pipeline import Pipeline
from .limits import MAX_PIXELS, MAX_UPLOAD, Refused


def picture(body: bytes, what: str) -> Image.Image:
    """An image file's bytes, opened; refused if too large or not an image."""
    if len(body) > MAX_UPLOAD:
        raise Refused(f"{what} has {len(body)} bytes; at most {MAX_UPLOAD} are taken")
    try:
        opened = Image.open(io.BytesIO(body))
        if opened.width * opened.height > MAX_PIXELS:
            raise Refused(f"{what} is {opened.width}x{opened.height} pixels; at most {MAX_PIXELS} pixels are taken")
        opened.load()
    except Refused:
        raise
    except Exception as error:  # PIL's many ways of saying "not an image"
        raise Refused(f"{what} is not an image that can be read ({type(error).__name__}); send a PNG or JPEG") from None
    return opened


def array(opened: Image.Image) -> np.ndarray:
    """A PIL image as uint8 [H, W, C], a copy (torch wants a writable array)."""
    pixels = np.array(opened, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def mask(value: object, pipe: Pipeline) -> torch.Tensor:
    """A mask drawn on the page: a PNG data URL, white where the image is to be filled, as floats [H, W]."""
    if not isinstance(value, str) or not value.startswith("data:image/png;base64,"):
        raise Refused("the mask must be a PNG data URL (white: fill, black: keep)")
    try:
        body = base64.b64decode(value.split(",", 1)[1], validate=True)
    except ValueError:
        raise Refused("the mask's data URL is not base64") from None
    return Editor(pipe).mask_tensor(picture(body, "the mask").convert("L"))  # of the image's size, or the pipeline says so


def png(images: torch.Tensor) -> bytes:
    """uint8 [C, H, W] as PNG bytes."""
    out = io.BytesIO()
    to_pil(images).save(out, format="PNG")
    return out.getvalue()


def data_url(images: torch.Tensor) -> str:
    """uint8 [N, C, H, W] as one PNG (a near-square grid on white, 1 pixel apart) in a data URL."""
    n, c, h, w = images.shape
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = torch.full((c, rows * (h + 1) - 1, columns * (w + 1) - 1), 255, dtype=torch.uint8)
    for k in range(n):
        top, left = (k // columns) * (h + 1), (k % columns) * (w + 1)
        grid[:, top : top + h, left : left + w] = images[k]
    return "data:image/png;base64," + base64.b64encode(png(grid)).decode()
