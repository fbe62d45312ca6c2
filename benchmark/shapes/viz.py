"""Pictures for eyeballing the detector: detections drawn on an image, and grids of such images."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from .detector import UNKNOWN, Detection, detect, to_array


def draw_detections(image, detections: Sequence[Detection] | None = None, scale: int = 4,
                    title: str | None = None) -> Image.Image:
    """The image enlarged `scale` times (nearest neighbour) with a box and "colour shape score" per detection.

    Detections default to `detect(image, keep_unknown=True)`; unknown blobs are boxed in grey. `title`
    (e.g. the caption) is written on a white strip under the image.
    """
    arr = to_array(image).clip(0, 255).astype("uint8")
    if detections is None:
        detections = detect(arr, keep_unknown=True)
    h, w = arr.shape[:2]
    strip = 12 if title else 0
    canvas = Image.new("RGB", (w * scale, h * scale + strip), "white")
    canvas.paste(Image.fromarray(arr).resize((w * scale, h * scale), Image.NEAREST), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for d in detections:
        x0, y0, x1, y1 = (v * scale for v in d.bbox)
        colour = (128, 128, 128) if d.shape == UNKNOWN else (0, 0, 0)
        draw.rectangle([x0 - 1, y0 - 1, x1, y1], outline=colour)
        text = f"{d.colour} {d.shape} {d.score:.2f}"
        x = max(min(x0, canvas.width - draw.textlength(text)), 0)  # keep the label on the canvas
        draw.text((x, max(y0 - 11, 0)), text, fill=colour)
    if title:
        draw.text((2, h * scale), title, fill="black")
    return canvas


def grid(images: Sequence, detections: Sequence[Sequence[Detection]] | None = None, ncols: int = 8,
         scale: int = 4, titles: Sequence[str] | None = None, pad: int = 4) -> Image.Image:
    """Several images with their detections drawn (`draw_detections`), laid out in rows of `ncols`."""
    tiles = [draw_detections(img, None if detections is None else detections[i], scale,
                             None if titles is None else titles[i])
             for i, img in enumerate(images)]
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = (len(tiles) + ncols - 1) // ncols
    sheet = Image.new("RGB", (ncols * (tw + pad) + pad, rows * (th + pad) + pad), (200, 200, 200))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (pad + (i % ncols) * (tw + pad), pad + (i // ncols) * (th + pad)))
    return sheet
