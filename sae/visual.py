"""Looking at the method: per-object cross-attention maps over the denoising steps, drawn on the image.

`trace_object_maps` records, while it is open, the per-object maps of every UNet forward (the 1/4-resolution
maps that the losses use, `sae.attention.capture_cross_attention` + `object_maps`, the conditional half under
classifier-free guidance) without touching the sampling loop: any pipeline call or benchmark method run
inside it is traced. `map_losses` gives their Separate and Enhance values (`sae.losses`), `attention_figure`
draws them on the image (matplotlib, Agg), and `write_training_report` is `python -m sae train --report`:
the loss curves of `losses.csv` and the maps of the training prompt before and after training.
"""

from __future__ import annotations

import csv
import html
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .attention import capture_cross_attention, object_maps, split_guidance
from .losses import enhance_loss, separate_loss

TRACE_STEPS = 5  # denoising steps shown, evenly spaced from the first to the last


class MapTrace(list):
    """Per-object maps, one entry per UNet forward, with the forwards' timesteps in `timesteps`."""

    def __init__(self):
        super().__init__()
        self.timesteps: list[int] = []

    def step_labels(self, picks: list[int]) -> list[str]:
        return [f"t={self.timesteps[i]} ({i + 1}/{len(self)})" for i in picks]


@contextmanager
def trace_object_maps(unet, token_groups, num_images: int = 1, downscale: int = 4):
    """Yields a `MapTrace` that receives, after each UNet forward, the per-object maps `(num_images, K, H, W)`
    (CPU, float32; of the conditional half when the forward's batch is `2 * num_images`: classifier-free
    guidance) and the forward's timestep."""
    with capture_cross_attention(unet, downscale) as store:
        trace = MapTrace()

        def after(module, args, kwargs, output):
            maps = store.maps().detach().float()
            if maps.shape[0] == 2 * num_images:
                maps = split_guidance(maps)[1]
            trace.append(object_maps(maps, token_groups).cpu())
            t = args[1] if len(args) > 1 else kwargs.get("timestep")
            trace.timesteps.append(int(t.flatten()[0]) if torch.is_tensor(t) else int(t))

        hook = unet.register_forward_hook(after, with_kwargs=True)
        try:
            yield trace
        finally:
            hook.remove()


def evenly_spaced(total: int, count: int = TRACE_STEPS) -> list[int]:
    """`count` indices from 0 to `total - 1` (all of them when there are fewer)."""
    if total <= 0:
        return []
    return sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))


def map_losses(maps: torch.Tensor, pair_reduction: str = "max") -> dict[str, float | None]:
    """Separate (None for a single object) and Enhance of one image's object maps `(K, H, W)`."""
    maps = maps.float()
    sep = float(separate_loss(maps, pair_reduction=pair_reduction)) if maps.shape[0] >= 2 else None
    return {"sep": sep, "en": float(enhance_loss(maps))}


def sample_with_maps(pipe, prompt: str, token_groups, seed: int, steps: int, guidance: float):
    """One image of `prompt`, its traced maps `(forwards, K, H, W)` and the forwards' timesteps."""
    from .sampling import seed_generators

    with torch.no_grad(), trace_object_maps(pipe.unet, token_groups) as trace:
        image = pipe(prompt=[prompt], generator=seed_generators([seed]), num_inference_steps=steps,
                     guidance_scale=guidance).images[0]
    return image, torch.cat(trace), trace.timesteps


def attention_figure(rows: list[dict], step_labels: list[str], path: Path, panel_inches: float = 1.25) -> Path:
    """One PNG: a row per (label, object), the image then its map at each chosen step drawn over it.

    Each row dict: `label`, `image` (PIL), `objects` (names), `maps` `(steps, K, H, W)` and `losses` (one
    `map_losses` dict per step). Maps are scaled to their own peak (printed in the panel) and upsampled
    bilinearly onto a dimmed grey copy of the image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [(row, k) for row in rows for k in range(len(row["objects"]))]
    cols = 1 + len(step_labels)
    fig, axes = plt.subplots(len(lines), cols, figsize=(panel_inches * cols, panel_inches * len(lines) + 0.3),
                             squeeze=False)
    for r, (row, k) in enumerate(lines):
        image = np.asarray(row["image"].convert("RGB"))
        grey = np.asarray(row["image"].convert("L"), dtype=float) / 255
        h, w = grey.shape
        axes[r, 0].imshow(image, interpolation="nearest")
        axes[r, 0].set_ylabel(f"{row['label']}\n{row['objects'][k]}", fontsize=7)
        for s in range(len(step_labels)):
            ax = axes[r, s + 1]
            values = np.asarray(row["maps"][s][k], dtype=float)
            ax.imshow(grey * 0.6, cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0), interpolation="nearest")
            ax.imshow(values / max(values.max(), 1e-8), cmap="jet", alpha=0.55, vmin=0, vmax=1,
                      extent=(0, w, h, 0), interpolation="bilinear")
            ax.text(1, h - 1, f"max {values.max():.2f}", color="white", fontsize=6, va="bottom")
            if k == 0:
                loss = row["losses"][s]
                sep = "-" if loss["sep"] is None else f"{loss['sep']:.3f}"
                ax.set_title(f"{step_labels[s]}\nS {sep}  E {loss['en']:.3f}", fontsize=6)
        if k == 0:
            axes[r, 0].set_title(row["label"], fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def loss_lines(rows: list[dict]) -> list[tuple[str, str, list[str]]]:
    """Separate and Enhance of each row ({"label", "losses"}) per step, as (label, loss, text cells; "-" where a
    step has none): the losses table of the training report and of the benchmark's attention page."""
    return [(row["label"], label, ["-" if loss[key] is None else f"{loss[key]:.4f}" for loss in row["losses"]])
            for row in rows for key, label in (("sep", "Separate"), ("en", "Enhance"))]


def losses_table_html(rows: list[dict], step_labels: list[str]) -> str:
    """Separate / Enhance per row and step as an HTML table."""
    head = "".join(f"<th>{html.escape(s)}</th>" for s in step_labels)
    body = ["<tr><th>" + html.escape(label) + f"</th><th>{loss}</th>" + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>" for label, loss, cells in loss_lines(rows)]
    return (f'<table class="losses"><tr><th></th><th>loss</th>{head}</tr>' + "".join(body) + "</table>")


def read_losses(path: Path) -> dict[str, list]:
    """`losses.csv` as columns of floats (empty cells dropped per column, with their steps)."""
    columns: dict[str, list] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for name in ("total", "sep", "en", "norm"):
                if row.get(name) not in (None, ""):
                    columns.setdefault(name, []).append((int(row["step"]), float(row[name])))
    return columns


def losses_figure(losses_csv: Path, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    for name, points in read_losses(losses_csv).items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=name, linewidth=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


PAGE_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1100px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
img{max-width:100%}"""


def write_training_report(out_dir: Path, pipe, prompt: str, objects: list[str], token_groups, before: dict,
                          steps: int, guidance: float, seed: int = 0) -> Path:
    """`out_dir/report/index.html`: the loss curves and the maps of `prompt` before and after training.

    `before` is `{"image", "maps"}` sampled with the base weights (`sample_with_maps`) before training; the
    after maps are sampled now, with the trained weights on `pipe`."""
    report = Path(out_dir) / "report"
    report.mkdir(parents=True, exist_ok=True)
    after_image, after_maps, timesteps = sample_with_maps(pipe, prompt, token_groups, seed, steps, guidance)
    picks = evenly_spaced(len(after_maps))
    labels = [f"t={timesteps[i]}" for i in picks]
    rows = []
    for label, image, maps in (("before", before["image"], before["maps"]), ("after", after_image, after_maps)):
        chosen = maps[picks]
        rows.append({"label": label, "image": image, "objects": objects, "maps": chosen,
                     "losses": [map_losses(m) for m in chosen]})
    attention_figure(rows, labels, report / "maps.png")
    losses_csv = Path(out_dir) / "losses.csv"
    curves = ""
    if losses_csv.exists():
        losses_figure(losses_csv, report / "losses.png")
        curves = '<h2>Training losses</h2><img src="losses.png" alt="loss curves">'
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>SepEn training: {html.escape(prompt)}</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>SepEn training report</h1>
<p>Prompt <b>{html.escape(prompt)}</b>, objects {html.escape(', '.join(objects))}. Maps: the 1/4-resolution
cross-attention maps the losses use (conditional half), seed {seed}, {steps} denoising steps, guidance {guidance},
each scaled to its own peak.</p>
{curves}
<h2>Object maps before and after training</h2>
<img src="maps.png" alt="object maps before and after training">
<h3>Separate / Enhance of these maps</h3>
{losses_table_html(rows, labels)}
</body></html>
"""
    (report / "index.html").write_text(page)
    return report / "index.html"
