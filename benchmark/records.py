"""Per-image records: the image file is the unit of completion.

Each image is written atomically (temporary file, then rename) with its generation record inside the PNG
(a text chunk), GenEval-style under `images/<method>/<prompt id>/<seed>.png`. Scores go to
`scores/<metric>.jsonl`, one line per scored image. `samples.jsonl` is rebuilt from both at any time, so a
run killed at any point (kill -9 included) loses nothing that was written and never writes an image twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, PngImagePlugin

RECORD_KEY = "sae_record"


def image_path(run_dir: Path, method: str, prompt_id: str, seed: int) -> Path:
    return run_dir / "images" / method / prompt_id.replace("/", "_") / f"{seed:04d}.png"


def record_key(record: dict) -> tuple[str, str, int]:
    return record["method"], record["prompt_id"], int(record["seed"])


def write_image(path: Path, image: Image.Image, record: dict) -> None:
    """Save `image` with `record` embedded; atomic, so a reader sees the whole file or none.

    The rename is what makes a killed run leave whole images only, which is all resume needs; no fsync per image
    (it guards against power loss, not interruption).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text(RECORD_KEY, json.dumps(record))
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def read_record(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text[RECORD_KEY])


def scan_records(run_dir: Path) -> list[dict]:
    """Every finished image's record, in a stable order (method, prompt id, seed)."""
    records = []
    for path in sorted((run_dir / "images").glob("*/*/*.png")):
        record = read_record(path)
        record["path"] = str(path.relative_to(run_dir))
        records.append(record)
    return sorted(records, key=record_key)


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append whole lines and fsync: a kill leaves at most one partial last line, which readers skip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write("".join(json.dumps(row) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill; its image is rescored on resume
    return rows


def read_scores(run_dir: Path) -> dict[tuple[str, str, int], dict[str, float]]:
    """All metric columns per image; a later line for the same image and metric replaces an earlier one."""
    scores: dict[tuple[str, str, int], dict[str, float]] = {}
    for path in sorted((run_dir / "scores").glob("*.jsonl")):
        for row in read_jsonl(path):
            scores.setdefault(record_key(row), {}).update(row["values"])
    return scores


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_samples(run_dir: Path) -> list[dict]:
    """Join image records and scores into `samples.jsonl` (one line per image) and return the rows."""
    scores = read_scores(run_dir)
    rows = [{**record, **scores.get(record_key(record), {})} for record in scan_records(run_dir)]
    write_text_atomic(run_dir / "samples.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return rows
