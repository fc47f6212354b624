"""Image grids people look at: rows of samples with a text label per row."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def labelled_grid(rows: list[tuple[str, torch.Tensor]], cell: int = 64, title: str | None = None) -> Image.Image:
    """One row per (label, images) pair; images nearest-upscaled to `cell` pixels."""
    font = _font(14)
    label_w = 12 + max((int(font.getlength(label)) for label, _ in rows), default=0)
    ncols = max(imgs.shape[0] for _, imgs in rows)
    top = 28 if title else 4
    pad = 2
    W = label_w + ncols * (cell + pad) + pad
    H = top + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 6), title, fill=(0, 0, 0), font=font)
    for r, (label, imgs) in enumerate(rows):
        y = top + r * (cell + pad)
        draw.text((6, y + cell // 2 - 8), label, fill=(0, 0, 0), font=font)
        for c, arr in enumerate(to_uint8(imgs)):
            tile = Image.fromarray(arr).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (cell + pad), y))
    return canvas
