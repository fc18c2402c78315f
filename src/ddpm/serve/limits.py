"""What one request to `ddpm serve` may ask, and how a request is refused.

A number that arrives as text (a query string) or JSON is read by `whole` and checked by the
settings' own range check (config/settings.check_range), so a bad one reads as a bad flag does:
"t must be in [0, 99] (got 5000)". Refused is a request's answer: its status and one line of JSON.
"""

from __future__ import annotations

from typing import Optional

from ..config.settings import check_range

MAX_IMAGES = 16  # images per draw
MAX_STEPS = 1000  # and never more than the run's T
MAX_UPLOAD = 4 * 2**20  # bytes of an uploaded image
MAX_PIXELS = 4096 * 4096  # pixels of an uploaded image, before it is resized
MAX_BODY = 2 * MAX_UPLOAD  # a JSON request: a mask drawn on the page travels in it as a PNG
DRAINED = 16 * MAX_UPLOAD  # a body over its limit is read and dropped up to this size, else the connection closes
MAX_QUEUE = 2  # draws waiting behind the running one; more get 429
KEPT = 16  # finished draws and uploads kept for download, the oldest dropped first
PREVIEW_SHARE = 0.2  # a latent run decodes previews while they cost at most this share of the draw
SEEDS = 2**31 - 1  # the largest seed


class Refused(Exception):
    """A request answered with `status` and one line of JSON."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def whole(text: object, what: str, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """A whole number as a query string or JSON gives it ("5", 5 or 5.0), within [low, high]."""
    try:
        value = int(text)
        if isinstance(text, float) and not float(text).is_integer():
            raise ValueError
    except (TypeError, ValueError):
        raise Refused(f"{what} must be a whole number (got {text!r})") from None
    check_range(value, what, ge=low, le=high)
    return value
