"""Regenerate the natural-language prompt suites in `prompts/` (JSONL, one prompt per line).

    python -m benchmark.build_suites --published-data DIR

DIR holds the published prompt sets as JSON: `ae_prompts.json` (Attend-and-Excite's prompts) and
`sepen_large_scale.json` (SepEn's large-scale test prompts and concept lists).

`single_object`, `two_object` and `multi_object` are drawn from the vocabulary below with a fixed seed;
`ae276` and `sepen_large` are the published sets (Attend-and-Excite's 276 prompts; SepEn's 200 large-scale
test prompts with their seen/unseen splits, and its concept lists); `polysemy` is written by hand; `ci` takes
two prompts of every category of every suite. Rerunning the script rewrites identical files.

The shapes world's suites (`prompts/shapes/`, the same names) come from `benchmark.shapes.suites`; they need no
published data and are written too. With `--geneval-metadata FILE` (GenEval's evaluation_metadata.jsonl),
`geneval` is written as well (`benchmark.geneval.suite`, which can also write it alone); without it, `ci` takes
its geneval prompts from the committed `prompts/geneval.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from .domains import domains
from .suites import PROMPTS_DIR, ci_subset, write_jsonl

SEED = 0
ANIMALS = ["cat", "dog", "bird", "bear", "lion", "horse", "elephant", "monkey", "frog", "turtle", "rabbit",
           "mouse"]  # Attend-and-Excite's animals
OBJECTS = ["backpack", "crown", "suitcase", "chair", "balloon", "car", "bowl", "bench", "clock", "apple",
           "umbrella", "cup"]  # A&E's objects without the ambiguous "glasses" and "bow" (see polysemy)
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "gray", "black", "white"]

# (prompt, [(object word, what the detector should look for)]): one word, two senses
POLYSEMY = [
    ("a cat and a mouse", [("cat", "cat"), ("mouse", "mouse (animal)")]),
    ("a keyboard and a mouse", [("keyboard", "computer keyboard"), ("mouse", "computer mouse")]),
    ("a bat and a ball", [("bat", "baseball bat"), ("ball", "ball")]),
    ("a bat and an owl", [("bat", "bat (animal)"), ("owl", "owl")]),
    ("a crane and a truck", [("crane", "construction crane"), ("truck", "truck")]),
    ("a crane and a frog", [("crane", "crane (bird)"), ("frog", "frog")]),
    ("a seal and a penguin", [("seal", "seal (animal)"), ("penguin", "penguin")]),
    ("a seal and an envelope", [("seal", "wax seal"), ("envelope", "envelope")]),
    ("an orange and a banana", [("orange", "orange (fruit)"), ("banana", "banana")]),
    ("a bow and an arrow", [("bow", "bow (weapon)"), ("arrow", "arrow")]),
    ("a bow and a gift box", [("bow", "ribbon bow"), ("box", "gift box")]),
    ("a pair of glasses and a book", [("glasses", "eyeglasses"), ("book", "book")]),
    ("two glasses and a bottle of wine", [("glasses", "wine glass"), ("bottle", "wine bottle")]),
    ("a jaguar and a tree", [("jaguar", "jaguar (animal)"), ("tree", "tree")]),
    ("a jaguar and a garage", [("jaguar", "jaguar (car)"), ("garage", "garage")]),
    ("a fan and a lamp", [("fan", "electric fan"), ("lamp", "lamp")]),
]


def phrase(word: str, colour: str | None = None) -> str:
    text = f"{colour} {word}" if colour else word
    return f"{'an' if text[0] in 'aeiou' else 'a'} {text}"


def entry(suite, index, category, objects, joiner=" and ", prefix=""):
    """objects: [(name, attribute or None)] -> one suite line."""
    prompt = prefix + joiner.join(phrase(name, attr) for name, attr in objects)
    return {"id": f"{suite}/{index:04d}", "suite": suite, "category": category, "prompt": prompt,
            "objects": [{"name": name, **({"attribute": attr} if attr else {}), "count": 1}
                        for name, attr in objects]}


def single_object(rng):
    rows = [("animal", [(a, None)]) for a in ANIMALS] + [("object", [(o, None)]) for o in OBJECTS]
    rows += [("colored_object", [(o, rng.choice(COLOURS))]) for o in OBJECTS]
    return [entry("single_object", i, cat, objs) for i, (cat, objs) in enumerate(rows)]


def _draw(rng, kinds, coloured=0.5):
    names = []
    for kind in kinds:
        pool = [w for w in (ANIMALS if kind == "animal" else OBJECTS) if w not in names]
        names.append(rng.choice(pool))
    return [(n, rng.choice(COLOURS) if n in OBJECTS and rng.random() < coloured else None) for n in names]


def two_object(rng, per_category=20):
    plan = [("animal_animal", ["animal", "animal"]), ("animal_object", ["animal", "object"]),
            ("object_object", ["object", "object"])]
    rows, seen = [], set()
    for category, kinds in plan:
        while sum(r[0] == category for r in rows) < per_category:
            objs = _draw(rng, kinds)
            if tuple(objs) not in seen:
                seen.add(tuple(objs))
                rows.append((category, objs))
    return [entry("two_object", i, cat, objs) for i, (cat, objs) in enumerate(rows)]


def multi_object(rng, three=40, four=20):
    rows, seen = [], set()
    for category, count, n in (("three_objects", 3, three), ("four_objects", 4, four)):
        while sum(r[0] == category for r in rows) < n:
            kinds = [rng.choice(["animal", "object"]) for _ in range(count)]
            objs = _draw(rng, kinds)
            if tuple(objs) not in seen:
                seen.add(tuple(objs))
                rows.append((category, objs))
    return [entry("multi_object", i, cat, objs) for i, (cat, objs) in enumerate(rows)]


def _parse_ae_prompt(prompt, colours):
    joiner = " with " if " with " in prompt else " and "
    objects = []
    for part in prompt.split(joiner):
        words = part.split()[1:]  # drop the article
        attr = words[0] if len(words) > 1 and words[0] in colours else None
        objects.append((words[-1], attr))
    return objects, joiner


def ae276(data):
    categories = {"animals": "animal_animal", "animals_objects": "animal_object", "objects": "object_object"}
    colours = set(data["vocabulary"]["colors"])
    rows = []
    for key, category in categories.items():
        for prompt in data["prompts"][key]:
            objects, joiner = _parse_ae_prompt(prompt, colours)
            row = entry("ae276", len(rows), category, objects, joiner=joiner)
            row["prompt"] = prompt  # verbatim (keeps "a elephant", as published)
            rows.append(row)
    return rows


def sepen_large(data):
    rows = []
    splits = data["test_splits"]
    for index, prompt in enumerate(data["test_prompts"]):
        category = next(name for name, (lo, hi) in splits.items() if lo <= index < hi)
        body = prompt.removeprefix("a photo of ")
        objects, joiner = _parse_ae_prompt(body, set())
        row = entry("sepen_large", index, category, objects, joiner=joiner, prefix="a photo of ")
        row["prompt"] = prompt
        rows.append(row)
    return rows


def polysemy():
    rows = []
    for index, (prompt, objects) in enumerate(POLYSEMY):
        rows.append({"id": f"polysemy/{index:04d}", "suite": "polysemy", "category": "polysemy", "prompt": prompt,
                     "objects": [{"name": name, "count": 1, "query": query} for name, query in objects]})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--published-data", type=Path, required=True,
                        help="folder with ae_prompts.json and sepen_large_scale.json")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "prompts")
    parser.add_argument("--geneval-metadata", type=Path, default=None,
                        help="GenEval's evaluation_metadata.jsonl: also write the geneval suite")
    args = parser.parse_args(argv)
    rng = random.Random(SEED)
    ae = json.loads((args.published_data / "ae_prompts.json").read_text())
    large = json.loads((args.published_data / "sepen_large_scale.json").read_text())
    suites = {"single_object": single_object(rng), "two_object": two_object(rng), "multi_object": multi_object(rng),
              "ae276": ae276(ae), "sepen_large": sepen_large(large), "polysemy": polysemy()}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in suites.items():
        write_jsonl(args.out / f"{name}.jsonl", rows)
    if args.geneval_metadata is not None:
        from .geneval.suite import write_geneval_suite

        suites["geneval"] = write_geneval_suite(args.geneval_metadata, args.out / "geneval.jsonl")
    elif (PROMPTS_DIR / "geneval.jsonl").is_file():  # its metadata lives outside: ci takes the committed suite
        suites["geneval"] = [json.loads(line) for line in (PROMPTS_DIR / "geneval.jsonl").read_text().splitlines()]
    write_jsonl(args.out / "ci.jsonl", ci_subset(suites))
    for domain in domains():  # a domain that builds its own suites writes them beside ours
        if domain.write_suites is not None:
            domain.write_suites(args.out / domain.suites_dir.relative_to(PROMPTS_DIR))
    concepts = large["concepts"]
    (args.out / "sepen_large_concepts.json").write_text(json.dumps(
        {"train": concepts["animal_train"] + concepts["object_train"],
         "unseen": concepts["animal_test"] + concepts.get("object_test", []), "source": large["source"]}, indent=1))
    for name, rows in {**suites, "ci": ci_subset(suites)}.items():
        print(f"{name}: {len(rows)} prompts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
