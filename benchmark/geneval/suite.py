"""Write `prompts/geneval.jsonl` from GenEval's published prompt metadata (kept outside the repository).

    python -m benchmark.geneval.suite PATH/evaluation_metadata.jsonl [--out prompts/geneval.jsonl]

The metadata holds one prompt a line: `tag` (the task), `prompt`, `include` and, for counting, `exclude` clauses.
Each becomes a suite line with id `geneval/<index>` (its 0-based line number, 5 digits: GenEval's own image
folders are named by that index, so `<index>/` maps to `geneval/<index>`), category = the tag, the include
clauses as `objects` and the clauses themselves, unchanged, under `geneval`. An object is named by its word in
the prompt, so that methods find its tokens: the class, or for counting prompts its plural as the prompt spells it
("two clocks", "four benchs"), the class then being the object's `query`; its colour is its `attribute`.
The data is MIT-licensed (prompts/GENEVAL_LICENSE). Rerunning rewrites an identical file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .rules import spec_problem

SUITE = "geneval"
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "prompts" / f"{SUITE}.jsonl"
SEEDS_PER_PROMPT = 4  # GenEval's reference setting (the natural domain's default --num-seeds is 4 as well)


def prompt_word(prompt: str, name: str) -> str:
    """The words of `prompt` that name the class `name`: the class itself, else its plural as GenEval writes it
    (-s or -es on the last word: "clocks", "wine glasses", "benchs"). Raises ValueError when the prompt has
    neither."""
    words, target = prompt.split(), name.split()
    spans = [words[start:start + len(target)] for start in range(len(words) - len(target) + 1)]
    for forms in ([target[-1]], [target[-1] + "s", target[-1] + "es"]):
        for span in spans:
            if span[:-1] == target[:-1] and span[-1] in forms:
                return " ".join(span)
    raise ValueError(f"class {name!r} is not a word of the prompt {prompt!r}")


def suite_object(prompt: str, clause: dict) -> dict:
    word = prompt_word(prompt, clause["class"])
    return {"name": word, "count": clause["count"], **({"attribute": clause["color"]} if "color" in clause else {}),
            **({"query": clause["class"]} if word != clause["class"] else {})}


def suite_line(index: int, entry: dict) -> dict:
    spec = {"tag": entry["tag"], "include": entry["include"]}
    if entry.get("exclude"):
        spec["exclude"] = entry["exclude"]
    objects = [suite_object(entry["prompt"], clause) for clause in entry["include"]]
    return {"id": f"{SUITE}/{index:05d}", "suite": SUITE, "category": entry["tag"], "prompt": entry["prompt"],
            "objects": objects, "geneval": spec}


def build_geneval_suite(metadata: Path) -> list[dict]:
    """The suite lines of a GenEval metadata file; a line whose clauses break the rules' assumptions is refused
    with its line number."""
    rows = []
    for number, line in enumerate(Path(metadata).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        entry = json.loads(line)
        problem = spec_problem({k: entry.get(k) for k in ("tag", "include")} | {"exclude": entry.get("exclude", [])})
        if problem or not isinstance(entry.get("prompt"), str):
            raise ValueError(f"{metadata}:{number}: {problem or 'prompt must be a string'}")
        try:
            rows.append(suite_line(number - 1, entry))
        except ValueError as err:
            raise ValueError(f"{metadata}:{number}: {err}") from None
    return rows


def write_geneval_suite(metadata: Path, out: Path = DEFAULT_OUT) -> list[dict]:
    rows = build_geneval_suite(metadata)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metadata", type=Path, help="GenEval's evaluation_metadata.jsonl")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = write_geneval_suite(args.metadata, args.out)
    print(f"{SUITE}: {len(rows)} prompts -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
