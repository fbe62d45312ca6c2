"""A metric of a plug-in package, in one file: a per-image column and a report section of its own (the share of
bright images per method), which `summary.md`, `results.json`, the command's output and the HTML report show."""

import numpy as np

from benchmark.metrics import Metric, ReportSection


def share_values(rows: list[dict], described: dict, method_order) -> dict | None:
    methods = [m for m in method_order or [] if any(r["method"] == m and "bright" in r for r in rows)]
    if not methods:
        return None
    return {"methods": {m: float(np.mean([r["bright"] for r in rows if r["method"] == m and "bright" in r]))
                        for m in methods}}


def share_tables(values: dict) -> list:
    rows = [[method, f"{share:.3f}"] for method, share in values["methods"].items()]
    return [("Bright images (plugin section)", "share of bright images", ["method", "share"], rows)]


def share_markdown(values: dict) -> str:
    (title, note, header, rows), = share_tables(values)
    lines = [f"## {title}", "", note, "", "| " + " | ".join(header) + " |", "|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


class BrightShare(Metric):
    name = "bright_share"
    description = "1 when the image's mean brightness is over 0.2 (of 255)"
    columns = {"bright": True}
    convention = "mean of the RGB values over 0.2"
    report_section = ReportSection("bright_share", share_values, share_markdown, share_tables)

    def score(self, images, records):
        return [{"bright": float(np.asarray(image, dtype=float).mean() > 0.2)} for image in images]
