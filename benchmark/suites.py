"""Prompt suites: JSONL files in `prompts/`, one prompt per line with its objects annotated.

A line: `{"id": "two_object/0003", "suite": ..., "category": "animal_object", "prompt": "a cat and a red car",
"objects": [{"name": "cat", "count": 1}, {"name": "car", "attribute": "red", "count": 1}]}`; an object may
also carry `query`, what a detector should look for when the word has several senses ("computer mouse").
Other fields of a line are kept in `SuitePrompt.extra` for the metrics that read them (GenEval's clauses under
`geneval`: `prompts/geneval.jsonl`); a metric checks them before a run loads anything (`Metric.check_prompts`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"

class SuiteError(ValueError):
    """A suite that cannot be loaded."""


@dataclass(frozen=True)
class SuiteObject:
    name: str
    attribute: str | None = None
    count: int = 1
    query: str | None = None

    @property
    def phrase(self) -> str:
        """What a detector or a CLIP text prompt should look for."""
        return self.query or (f"{self.attribute} {self.name}" if self.attribute else self.name)


@dataclass(frozen=True)
class SuitePrompt:
    id: str
    prompt: str
    objects: tuple[SuiteObject, ...]
    category: str
    suite: str
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    where: str = field(default="", compare=False, hash=False)  # "file:line", for messages

    @property
    def object_words(self) -> list[str]:
        return [o.name for o in self.objects]

    @property
    def line_sha256(self) -> str:
        """A hash of what the line asks for (prompt, objects, category, GenEval clauses): a run folder's images
        carry it, so other prompts under the same ids are never taken for this suite's."""
        line = {"prompt": self.prompt, "objects": [vars(o) for o in self.objects], "category": self.category,
                "geneval": self.extra.get("geneval")}
        return hashlib.sha256(json.dumps(line, sort_keys=True).encode()).hexdigest()


def _check_types(row: dict) -> str | None:
    """What is wrong with the field types of a suite line, or None."""
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        return "prompt must be a non-empty string"
    if not isinstance(row.get("id"), (str, int)) or isinstance(row.get("id"), bool):
        return "id must be a string"
    if "category" in row and (not isinstance(row["category"], str) or not row["category"].strip()):
        return f"category must be a non-empty string, got {row['category']!r}"
    if not isinstance(row.get("objects"), list):
        return "objects must be a list of {name, ...}"
    for obj in row["objects"]:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"].strip():
            return "every object needs a name (a non-empty string)"
        count = obj.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            return f"object {obj['name']!r}: count must be a whole number >= 1, got {count!r}"
        for key in ("attribute", "query"):
            if obj.get(key) is not None and not isinstance(obj[key], str):
                return f"object {obj['name']!r}: {key} must be a string, got {obj[key]!r}"
    return None


def _check_id(prompt_id: str, folders: dict) -> str | None:
    """What is wrong with a prompt id as a folder of the run (`records.id_folder`), or None."""
    from .records import id_folder

    folder = id_folder(prompt_id)
    if folder in ("", ".", "..") or "\\" in prompt_id or "\0" in prompt_id:
        return f"prompt id {prompt_id!r} cannot name a folder: use letters, digits, '_', '-', '/' and '.'"
    if folder in folders:
        return (f"prompt id {prompt_id!r} shares the folder {folder!r} with id {folders[folder][0]!r} (line "
                f"{folders[folder][1]}): rename one")
    return None


def available_suites(prompts_dir: Path = PROMPTS_DIR) -> list[str]:
    return sorted(p.stem for p in prompts_dir.glob("*.jsonl"))


def suite_path(name: str, prompts_dir: Path = PROMPTS_DIR) -> Path:
    """A suite name from `prompts/`, or a path to a JSONL file of the same format."""
    path = Path(name)
    if path.suffix == ".jsonl" and path.is_file():
        return path
    candidate = prompts_dir / f"{name}.jsonl"
    if not candidate.is_file():
        raise SuiteError(f"unknown suite {name!r}: choose one of {', '.join(available_suites(prompts_dir))} "
                         "(`python -m benchmark ls suites`) or pass a .jsonl file")
    return candidate


def load_suite(name: str, prompts_dir: Path = PROMPTS_DIR, object_problem=None) -> list[SuitePrompt]:
    """A suite's prompts, every line checked; `object_problem(SuiteObject)` (a domain's: what its instruments
    cannot draw or detect) names an object the run could only score as missing."""
    path = suite_path(name, prompts_dir)
    from .records import id_folder

    prompts, ids, folders = [], set(), {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problem = _check_types(row) if isinstance(row, dict) else "a line must be a JSON object"
            if problem:
                raise SuiteError(f"{path}:{number}: {problem}")
            objects = tuple(SuiteObject(**o) for o in row["objects"])
            item = SuitePrompt(id=str(row["id"]), prompt=row["prompt"], objects=objects,
                               category=row.get("category", "all"), suite=row.get("suite", path.stem),
                               extra={k: v for k, v in row.items()
                                      if k not in ("id", "prompt", "objects", "category", "suite")},
                               where=f"{path}:{number}")
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise SuiteError(f"{path}:{number}: not a suite line ({type(err).__name__}: {err}); each line needs "
                             "id, prompt and objects [{name, ...}]") from err
        if not objects:
            raise SuiteError(f"{path}:{number}: prompt {item.id} lists no objects")
        if item.id in ids:
            raise SuiteError(f"{path}:{number}: duplicate prompt id {item.id}")
        problem = (_check_id(item.id, folders)
                   or next(filter(None, map(object_problem or (lambda o: None), objects)), None))
        if problem:
            raise SuiteError(f"{path}:{number}: {problem}")
        ids.add(item.id)
        folders[id_folder(item.id)] = (item.id, number)
        prompts.append(item)
    if not prompts:
        raise SuiteError(f"suite file {path} holds no prompts")
    return prompts


def ci_subset(suites: dict, per_category: int = 2) -> list[dict]:
    """The `ci` suite: the first `per_category` prompts of every category of every suite (JSON rows)."""
    rows = []
    for entries in suites.values():
        for category in dict.fromkeys(e["category"] for e in entries):
            rows.extend([e for e in entries if e["category"] == category][:per_category])
    return rows


def write_jsonl(path: Path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
