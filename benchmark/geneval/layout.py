"""GenEval's own image folders as a run folder: `python -m benchmark score DIR --layout geneval`.

GenEval's generation script writes, per prompt of its metadata, `DIR/<index>/metadata.jsonl` (the prompt's
metadata line) and `DIR/<index>/samples/<n>.png` (index and n zero-padded to 5 digits; any digits are accepted
here). Each image becomes an image of an ordinary run folder (`records.write_image`: the pixels unchanged, the
record inside the PNG, as `run` writes them): method `external` (or the name given), prompt id `geneval/<index>`
(the line of `prompts/geneval.jsonl` the index names; its prompt must be the folder's), seed = n. Importing again
adds only the images still missing, so a folder that grows can be imported and scored as it grows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from ..records import image_path, write_image, write_json
from .suite import SUITE

DIGITS = re.compile(r"\d+")
LAYOUT = "geneval"
REMEDY = ("pass the folder GenEval's generation script wrote (its --outdir: <index>/metadata.jsonl and "
          "<index>/samples/<n>.png per prompt)")


class LayoutError(ValueError):
    """A folder that is not in GenEval's layout."""


def _refuse(source: Path, problem: str, remedy: str = REMEDY):
    raise LayoutError(f"{source} is not in GenEval's layout: {problem}; {remedy}")


def default_out(source: Path) -> Path:
    """The run folder beside GenEval's: `DIR_scored`."""
    source = Path(source).resolve()
    return source.with_name(f"{source.name}_scored")


def suite_prompts() -> dict[str, object]:
    """{prompt id: SuitePrompt} of the natural domain's GenEval suite."""
    from ..domains import prompts_dir
    from ..suites import load_suite

    return {p.id: p for p in load_suite(SUITE, prompts_dir("natural"))}


def _numbered(entries, what: str, source: Path) -> dict[int, Path]:
    """{number: path} of entries named by digits; two names of one number (`1`, `01`) are refused."""
    found: dict[int, Path] = {}
    for path in entries:
        number = int(path.name if what == "folder" else path.stem)
        if number in found:
            _refuse(source, f"{found[number]} and {path} are the same {what} number {number}",
                    "keep one of them")
        found[number] = path
    return found


def read_layout(source: Path) -> list[tuple[int, dict, dict[int, Path]]]:
    """(index, metadata, {sample number: png}) per prompt folder, by index. Raises LayoutError naming the
    problem."""
    source = Path(source)
    if not source.is_dir():
        _refuse(source, "no such folder")
    if (source / "run_config.json").exists():
        _refuse(source, "it is a run folder of this benchmark", "score it without --layout geneval")
    folders = _numbered(sorted(p for p in source.iterdir() if p.is_dir() and DIGITS.fullmatch(p.name)),
                        "folder", source)
    if not folders:
        _refuse(source, "no <index>/ prompt folders in it")
    prompts = []
    for index, folder in sorted(folders.items()):
        meta_path = folder / "metadata.jsonl"
        if not meta_path.is_file():
            _refuse(source, f"{meta_path} is missing")
        try:
            metadata = json.loads(meta_path.read_text().strip().splitlines()[0])
        except (json.JSONDecodeError, IndexError):
            metadata = None
        if not isinstance(metadata, dict) or not isinstance(metadata.get("prompt"), str):
            _refuse(source, f"{meta_path} is not one JSON line with the prompt's metadata ({{tag, prompt, include}})")
        samples = folder / "samples"
        pngs = sorted(samples.glob("*.png")) if samples.is_dir() else []
        stray = [p.name for p in pngs if not DIGITS.fullmatch(p.stem)]
        if stray:
            _refuse(source, f"{samples} holds {stray[0]}, not a numbered sample (<n>.png)")
        prompts.append((index, metadata, _numbered(pngs, "sample", source)))
    if not any(samples for _, _, samples in prompts):
        _refuse(source, "no <index>/samples/<n>.png image in it")
    return prompts


def run_config(source: Path, method: str, seeds: list[int], previous: dict | None) -> dict:
    """The run folder's settings: GenEval's suite on the natural domain, the imported folder per method."""
    config = dict(previous or {"suite": SUITE, "model": "external", "domain": "natural", "layout": LAYOUT,
                               "methods": [], "seeds": [], "sources": {}, "metrics": []})
    config["methods"] = list(dict.fromkeys([*config["methods"], method]))
    config["seeds"] = sorted(set(config["seeds"]) | set(seeds))
    config["sources"] = {**config["sources"], method: str(Path(source).resolve())}
    return config


def import_layout(source: Path, out: Path | None = None, method: str = "external") -> tuple[Path, int]:
    """Write GenEval's images of `source` into the run folder `out` (default `DIR_scored`) as `method`; returns
    (out, images written now). Images already there are kept: importing again adds only what is missing."""
    source = Path(source)
    out = Path(out) if out is not None else default_out(source)
    prompts = read_layout(source)
    config_path = out / "run_config.json"
    previous = json.loads(config_path.read_text()) if config_path.exists() else None
    if previous is not None and previous.get("layout") != LAYOUT:
        _refuse(source, f"{out} is a run folder that `run` wrote, not one imported from GenEval's layout",
                "pass another --out")
    known = (previous or {}).get("sources", {}).get(method)
    if known is not None and known != str(source.resolve()):
        _refuse(source, f"{out} holds method {method!r} imported from {known}",
                "pass another --method-name, or another --out")
    suite = suite_prompts()
    for index, metadata, _ in prompts:
        prompt_id = f"{SUITE}/{index:05d}"
        item = suite.get(prompt_id)
        if item is None:
            _refuse(source, f"folder {index} names no GenEval prompt (prompts/geneval.jsonl has no {prompt_id}; "
                    f"its last is {max(suite)})", "number the folders as GenEval's evaluation_metadata.jsonl")
        if metadata["prompt"] != item.prompt:
            _refuse(source, f"folder {index} holds {metadata['prompt']!r}, but {prompt_id} is {item.prompt!r}",
                    "number the folders as GenEval's evaluation_metadata.jsonl")
    seeds = sorted({n for _, _, samples in prompts for n in samples})
    out.mkdir(parents=True, exist_ok=True)
    write_json(config_path, run_config(source, method, seeds, previous))
    written = 0
    for index, _, samples in prompts:
        item = suite[f"{SUITE}/{index:05d}"]
        for seed, png in sorted(samples.items()):
            target = image_path(out, method, item.id, seed)
            if target.exists():
                continue  # imported before: never rewritten
            record = {"method": method, "prompt_id": item.id, "suite": item.suite, "category": item.category,
                      "prompt": item.prompt, "objects": [o.__dict__ for o in item.objects], "seed": seed,
                      "model": "external", "source": str(png.resolve())}
            try:
                with Image.open(png) as image:
                    image.load()
            except (OSError, SyntaxError) as err:
                _refuse(source, f"{png} cannot be read ({type(err).__name__})", "remove or regenerate it")
            write_image(target, image, record)  # re-encoded losslessly: the record lives inside the PNG
            written += 1
    return out, written
