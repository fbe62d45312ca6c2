"""Per-image records: the image file is the unit of completion.

Each image is written atomically (temporary file, then rename) with its generation record inside the PNG
(a text chunk), GenEval-style under `images/<method>/<prompt id>/<seed>.png`. Scores go to
`scores/<metric>.jsonl`, one line per scored image. `samples.jsonl` is rebuilt from both at any time, so a
run killed at any point (kill -9 included) loses nothing that was written and never writes an image twice.
"""

from __future__ import annotations

import logging
import hashlib
import json
import math
import os
import re
from pathlib import Path

from PIL import Image, PngImagePlugin

from sae.files import atomic_path, write_atomic

logger = logging.getLogger(__name__)

RECORD_KEY = "sae_record"


def id_folder(prompt_id: str) -> str:
    """A prompt id's folder name. Suites refuse ids whose folder names would collide or escape (`suites.py`)."""
    return prompt_id.replace("/", "_")


def slug(text: str) -> str:
    """A file name for a prompt id or category (report pages, attention traces)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "_"


def image_path(run_dir: Path, method: str, prompt_id: str, seed: int) -> Path:
    return run_dir / "images" / method / id_folder(prompt_id) / f"{seed:04d}.png"


def record_key(record: dict) -> tuple[str, str, int]:
    return record["method"], record["prompt_id"], int(record["seed"])


def pixels_sha256(image: Image.Image) -> str:
    return hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()


def write_image(path: Path, image: Image.Image, record: dict) -> None:
    """Save `image` with `record` embedded, and the hash of its pixels (`image_problem` checks it); atomic, so a
    reader sees the whole file or none.

    The rename is what makes a killed run leave whole images only, which is all resume needs; no fsync per image
    (it guards against power loss, not interruption).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text(RECORD_KEY, json_text({**record, "pixels_sha256": pixels_sha256(image)}))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)


def read_record(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text[RECORD_KEY])


DAMAGED_SUFFIX = ".damaged"


PNG_END = b"IEND\xaeB`\x82"  # the last chunk of every complete PNG


def image_is_whole(path: Path) -> bool:
    """The PNG ends with its IEND chunk: a write cut short never does. Reads 8 bytes, so a run can check every
    image at its start; other damage surfaces when the image is read (`scan_records`)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-len(PNG_END), os.SEEK_END)
            return handle.read() == PNG_END
    except OSError:  # shorter than 8 bytes, or unreadable
        return False


def move_aside(path: Path, why: str = "cannot be read (damaged or truncated)") -> None:
    """Rename an image that is not what its path says to `<seed>.png.damaged`, naming it on one line: `run` makes
    it again."""
    os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))
    logger.warning(f"{path} {why}: moved aside to {path.name}{DAMAGED_SUFFIX}; `benchmark run` with the same "
                   "command makes it again")


def image_problem(path: Path) -> str | None:
    """Why an image file is not the image its path names, or None: cut short, unreadable, a record naming another
    method, prompt or seed (a file copied over another), or pixels that differ from its record's hash (edited)."""
    if not image_is_whole(path):
        return "cannot be read (cut short: an interrupted write)"
    try:
        with Image.open(path) as image:
            record = json.loads(image.text[RECORD_KEY])
            pixels = pixels_sha256(image) if "pixels_sha256" in record else None
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        return "cannot be read (damaged or truncated)"
    problem = record_problem(path, record)
    if problem is None and pixels is not None and pixels != record["pixels_sha256"]:
        return "has other pixels than its record's hash (edited after it was made)"
    return problem


def record_problem(path: Path, record) -> str | None:
    """Why an image's record does not name the image of its path, or None."""
    try:
        named = (record["method"], id_folder(str(record["prompt_id"])), f"{int(record['seed']):04d}.png")
    except (KeyError, TypeError, ValueError):
        return "holds no whole record (method, prompt_id, seed)"
    if named != (path.parent.parent.name, path.parent.name, path.name):
        return (f"holds the image of {record['method']} {record['prompt_id']} seed {record['seed']}, not of its path "
                "(a file copied over it)")
    return None


def quarantine_damaged(run_dir: Path, progress: bool = False) -> list[Path]:
    """Move aside every image that is not what its path says (`image_problem`: every file is read, a second or so
    per thousand small images), so that this run makes it again. Returns their paths."""
    from tqdm.auto import tqdm

    damaged = []
    paths = sorted((run_dir / "images").glob("*/*/*.png"))
    for path in tqdm(paths, desc="checking images", unit="img", disable=not progress or len(paths) < 1000):
        problem = image_problem(path)
        if problem:
            move_aside(path, problem)
            damaged.append(path)
    return damaged


def scan_records(run_dir: Path) -> list[dict]:
    """Every finished image's record, in a stable order (method, prompt id, seed). A file that cannot be read is
    moved aside, so it is missing, not a crash."""
    records = []
    for path in sorted((run_dir / "images").glob("*/*/*.png")):
        try:
            record = read_record(path)
        except (OSError, SyntaxError, ValueError, KeyError):
            move_aside(path)
            continue
        problem = record_problem(path, record)
        if problem:
            move_aside(path, problem)
            continue
        record["path"] = str(path.relative_to(run_dir))
        records.append(record)
    return sorted(records, key=record_key)


def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append whole lines and fsync: a kill leaves at most one partial last line, which readers skip. The append
    starts on a fresh line, so a torn last line never swallows the next record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        torn = False
        if handle.seek(0, os.SEEK_END) > 0:  # appends go to the end whatever was read before
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
        text = ("\n" if torn else "") + "".join(json_text(row) + "\n" for row in rows)
        handle.write(text.encode())
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path, warn: bool = True) -> list[dict]:
    """The lines of a JSONL file; a torn line (a kill during a write) is named on one line and skipped: the
    image it scored has no score then, and the next `run` or `score` scores it again."""
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if warn:
                logger.warning(f"{path}:{number}: skipped a torn line (an interrupted write); its image is scored "
                               "again by the next run or score")
    return rows


def read_scores(run_dir: Path) -> dict[tuple[str, str, int], dict[str, float]]:
    """All metric columns per image; a later line for the same image and metric replaces an earlier one. A line of
    another shape (edited by hand, another program's) is named and skipped: its image is scored again."""
    scores: dict[tuple[str, str, int], dict[str, float]] = {}
    for path in sorted((run_dir / "scores").glob("*.jsonl")):
        skipped = 0
        for row in read_jsonl(path):
            try:
                key, values = record_key(row), row["values"]
                if not isinstance(values, dict):
                    raise TypeError
            except (KeyError, TypeError, ValueError):
                skipped += 1
                continue
            scores.setdefault(key, {}).update(values)
        if skipped:
            logger.warning(f"{path}: skipped {skipped} line(s) that are not score lines ({{method, prompt_id, seed, "
                           "values}); their images are scored again by the next run or score")
    return scores


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


CONFIG_NAME = "run_config.json"


def read_run_config(run_dir: Path) -> dict:
    """A run folder's settings; a missing or damaged file is one line naming it and the way back."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a benchmark run folder (no {CONFIG_NAME})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({err}): move it aside and run the same `benchmark run` command "
                         "again, which writes the settings anew (the images and scores stay)") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is damaged (not a JSON object): move it aside and run the same `benchmark run` "
                         "command again")
    return config


def read_derived_json(path: Path) -> dict | None:
    """A JSON file a command rebuilds from the images (a set metric's values): None when absent or damaged, the
    latter named on one line (it is made again)."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        logger.warning(f"{path} is damaged: left out, and made again by the next run or score")
        return None
    return data


def write_text_atomic(path: Path, text: str) -> None:
    """Every file of a run folder is written this way: a reader (or a kill) sees the old file or the new one."""
    write_atomic(path, text)


MANIFEST_NAME = ".benchmark-files"  # the report pages and traces a run folder's commands made: all they ever delete


def made_files(run_dir: Path) -> set[str]:
    path = Path(run_dir) / MANIFEST_NAME
    return set(path.read_text().splitlines()) if path.is_file() else set()


def note_made(run_dir: Path, paths) -> None:
    """Add files just written to the folder's manifest (paths relative to it)."""
    run_dir = Path(run_dir)
    made = made_files(run_dir) | {str(Path(p).relative_to(run_dir)) for p in paths}
    write_text_atomic(run_dir / MANIFEST_NAME, "".join(f"{name}\n" for name in sorted(made)))


def remove_made(run_dir: Path, paths) -> None:
    """Delete those of `paths` that the folder's commands made (its manifest); any other file, a user's, stays."""
    run_dir = Path(run_dir)
    made = made_files(run_dir)
    gone = {name for name in (str(Path(p).relative_to(run_dir)) for p in paths) if name in made}
    for name in gone:
        (run_dir / name).unlink(missing_ok=True)
    if gone:
        write_text_atomic(run_dir / MANIFEST_NAME, "".join(f"{name}\n" for name in sorted(made - gone)))


def finite(value):
    """`value` with every float that is not a finite number (NaN, infinity) as None: JSON has no such numbers,
    and a reader of a run's files gets `null` ("no value") rather than a bare NaN that strict parsers refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def json_text(value, indent: int | None = None, default=None) -> str:
    """JSON for a run folder's files: strict (`allow_nan=False`), non-finite numbers written as null."""
    return json.dumps(finite(value), indent=indent, allow_nan=False, default=default)


def write_json(path: Path, value, indent: int | None = 1, default=None) -> None:
    """A run folder's JSON file, whole and strict (`json_text`); `default=str` for settings that hold paths."""
    write_text_atomic(path, json_text(value, indent, default) + "\n")


def build_samples(run_dir: Path) -> list[dict]:
    """Join image records and scores into `samples.jsonl` (one line per image) and return the rows."""
    scores = read_scores(run_dir)
    rows = [{**record, **scores.get(record_key(record), {})} for record in scan_records(run_dir)]
    write_text_atomic(run_dir / "samples.jsonl", "".join(json_text(row) + "\n" for row in rows))
    return rows
