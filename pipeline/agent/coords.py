"""Coordinate systems of UI-TARS-1.5: the smart-resized image the model sees vs. normalised [0, 1].

UI-TARS-1.5 (Qwen2.5-VL base) emits absolute pixels in the image *after* the processor's smart_resize,
so a point is only meaningful together with the resized size (benchmarks.md 1.3/1.4). Everything
downstream of the parser works in normalised coordinates; this module is the one place that converts.
"""

from __future__ import annotations

import math

IMAGE_FACTOR = 28  # ViT patch 14 x spatial merge 2
MAX_ASPECT_RATIO = 200
UITARS_MIN_PIXELS = 100 * 28 * 28  # 78,400: what UI-TARS code and GUI-KV pass to the processor
UITARS_MAX_PIXELS = 16384 * 28 * 28  # 12,845,056


def smart_resize(
    height: int,
    width: int,
    factor: int = IMAGE_FACTOR,
    min_pixels: int = UITARS_MIN_PIXELS,
    max_pixels: int = UITARS_MAX_PIXELS,
) -> tuple[int, int]:
    """Return ``(h', w')``: both multiples of ``factor``, area within [min_pixels, max_pixels], aspect kept.

    Same arithmetic as the Qwen2-VL image processor (Python ``round``, i.e. banker's rounding), so it must be
    called with the same pixel limits the processor used. Raises ValueError for non-positive sizes or an
    aspect ratio above 200.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio must be at most {MAX_ASPECT_RATIO}, got {ratio:.1f} for height={height}, width={width}"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_size(
    width: int,
    height: int,
    min_pixels: int = UITARS_MIN_PIXELS,
    max_pixels: int = UITARS_MAX_PIXELS,
) -> tuple[int, int]:
    """``(W', H')`` for an original ``(W, H)``: smart_resize in the width-first order images use elsewhere."""
    h, w = smart_resize(height, width, IMAGE_FACTOR, min_pixels, max_pixels)
    return w, h


def to_normalized(x: float, y: float, resized_w: int, resized_h: int) -> tuple[float, float]:
    """Model pixels (in the resized image) -> normalised [0, 1] coordinates; values are not clamped."""
    return x / resized_w, y / resized_h


def to_pixels(nx: float, ny: float, width: int, height: int) -> tuple[float, float]:
    """Normalised coordinates -> pixels of an image of ``width`` x ``height`` (original or resized)."""
    return nx * width, ny * height
