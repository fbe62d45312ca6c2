"""The world's prompt suites, in the format of `prompts/*.jsonl` (written to `prompts/shapes/` by
`python -m benchmark.build_suites`).

An object is its shape word with its colour as the attribute ("a red circle": name "circle", attribute "red"),
and its `query` is the pair ("red circle"): presence in this world means the right colour and the right shape.
`two_object` holds every held-out pair (data.HELDOUT_PAIRS, never seen together in training) in both orders as
its own category; the other prompts are seeded draws of distinct objects.
`geneval` holds GenEval's six tasks in the world's words, with GenEval's clauses (`geneval_suite`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmark.geneval.rules import RELATIONS

from .captions import NUMBER_WORDS, count_caption, relation_text
from .data import HELDOUT_PAIRS, has_heldout_pair
from .geometry import SHAPES
from .world import COLOURS, caption_for

SEED = 0
OBJECTS = [(c, s) for c in COLOURS for s in SHAPES]


def entry(suite: str, index: int, category: str, objects) -> dict:
    return {"id": f"{suite}/{index:04d}", "suite": suite, "category": category, "prompt": caption_for(objects),
            "objects": [{"name": shape, "attribute": colour, "count": 1, "query": f"{colour} {shape}"}
                        for colour, shape in objects],
            "heldout": has_heldout_pair(objects)}


def _distinct(rng, n: int, seen: set, allow_heldout: bool) -> list:
    while True:
        objects = [OBJECTS[i] for i in rng.choice(len(OBJECTS), n, replace=False)]
        # distinct shape words keep each object's token unique in the prompt
        if len({s for _, s in objects}) == n or n > len(SHAPES):
            key = tuple(objects)
            if key not in seen and (allow_heldout or not has_heldout_pair(objects)):
                seen.add(key)
                return objects


# The large-scale split (the paper's seen / unseen concepts): SepEn's large-scale checkpoint trains on pairs of the
# seen objects only; `sepen_large` tests pairs of seen-seen, seen-unseen and unseen-unseen objects.
UNSEEN_COLOURS = ("orange", "purple")
LARGE_SEEN = [o for o in OBJECTS if o[0] not in UNSEEN_COLOURS]
LARGE_UNSEEN = [o for o in OBJECTS if o[0] in UNSEEN_COLOURS]


def large_scale_concepts() -> dict:
    """What `sae train --concepts` reads: the seen objects as phrases ("red circle"), and the unseen ones."""
    return {"train": [f"{c} {s}" for c, s in LARGE_SEEN], "unseen": [f"{c} {s}" for c, s in LARGE_UNSEEN],
            "template": "{a} {connector} {b}", "connectors": ["and"],
            "source": "benchmark/shapes/suites.py (the shapes world; unseen: every orange and purple object)"}


def _pair_from(rng, first, second, seen: set) -> list:
    while True:
        a, b = first[rng.integers(len(first))], second[rng.integers(len(second))]
        if a[1] != b[1] and (a, b) not in seen:
            seen.add((a, b))
            return [a, b]


def sepen_large(per_category: int = 12) -> list[dict]:
    rng = np.random.default_rng([SEED, 1])
    seen: set = set()
    rows = []
    for category, first, second in (("seen_seen", LARGE_SEEN, LARGE_SEEN), ("seen_unseen", LARGE_SEEN, LARGE_UNSEEN),
                                    ("unseen_unseen", LARGE_UNSEEN, LARGE_UNSEEN)):
        rows += [(category, _pair_from(rng, first, second, seen)) for _ in range(per_category)]
    return [entry("sepen_large", i, cat, objs) for i, (cat, objs) in enumerate(rows)]


def shapes_suites(seen_pairs: int = 24, three: int = 24, four: int = 12) -> dict[str, list[dict]]:
    rng = np.random.default_rng(SEED)
    single = [entry("single_object", i, "single", [o]) for i, o in enumerate(OBJECTS)]
    pairs = [("seen_pair", _distinct(rng, 2, set(), allow_heldout=False)) for _ in range(seen_pairs)]
    pairs += [("heldout_pair", list(p)) for p in HELDOUT_PAIRS]
    pairs += [("heldout_pair", list(p[::-1])) for p in HELDOUT_PAIRS]
    two = [entry("two_object", i, cat, objs) for i, (cat, objs) in enumerate(pairs)]
    seen: set = set()
    rows = [("three_objects", _distinct(rng, 3, seen, True)) for _ in range(three)]
    rows += [("four_objects", _distinct(rng, 4, seen, True)) for _ in range(four)]
    multi = [entry("multi_object", i, cat, objs) for i, (cat, objs) in enumerate(rows)]
    return {"single_object": single, "two_object": two, "multi_object": multi, "sepen_large": sepen_large()}


# GenEval's six tasks in the world's vocabulary. The clauses name the shapes (class list "shapes", registered by
# the world's GenEval judge) and check what GenEval's task checks: colour only in `colors` and `color_attr`, although
# every prompt but three single-object ones names a colour (the world's captions always do).
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_CLASSES = "shapes"


def _clause(shape: str, count: int = 1, colour: str | None = None, position: list | None = None) -> dict:
    return {"class": shape, "count": count, **({"color": colour} if colour else {}),
            **({"position": position} if position else {})}


def _geneval_object(colour: str | None, shape: str, count: int = 1) -> dict:
    """A suite object: its word in the prompt (the plural for counts, as the natural geneval suite does), its colour
    as attribute, and the detector query "colour shape"."""
    obj = {"name": shape if count == 1 else f"{shape}s", "count": count, "query": shape}
    if colour:
        obj.update(attribute=colour, query=f"{colour} {shape}")
    return obj


def _two_apart(rng, seen: set) -> list:
    """Two objects of different shapes and different colours, an ordered pair not drawn before."""
    while True:
        a, b = (OBJECTS[i] for i in rng.choice(len(OBJECTS), 2, replace=False))
        if a[0] != b[0] and a[1] != b[1] and (a, b) not in seen:
            seen.add((a, b))
            return [a, b]


def geneval_tasks(per_task: int = 24) -> dict[str, list[tuple[str, list, dict]]]:
    """Per task: (prompt, suite objects, clauses) rows, seeded."""
    rng = np.random.default_rng([SEED, 2])
    tasks: dict[str, list] = {tag: [] for tag in GENEVAL_TAGS}
    for colour, shape in OBJECTS + [(None, s) for s in SHAPES]:  # 18 coloured objects, 3 bare shapes
        prompt = f"a {colour} {shape}" if colour else f"a {shape}"
        tasks["single_object"].append((prompt, [_geneval_object(colour, shape)], {"include": [_clause(shape)]}))
    seen: set = set()  # two_object and color_attr draw distinct pairs
    for a, b in (_two_apart(rng, seen) for _ in range(per_task)):
        tasks["two_object"].append((caption_for([a, b]), [_geneval_object(*a), _geneval_object(*b)],
                                    {"include": [_clause(a[1]), _clause(b[1])]}))
    for count in NUMBER_WORDS:
        for index in rng.choice(len(OBJECTS), per_task // len(NUMBER_WORDS), replace=False):
            colour, shape = OBJECTS[index]
            tasks["counting"].append((count_caption(colour, shape, count), [_geneval_object(colour, shape, count)],
                                      {"include": [_clause(shape, count)], "exclude": [_clause(shape, count + 1)]}))
    for colour, shape in OBJECTS:
        tasks["colors"].append((f"a {colour} {shape}", [_geneval_object(colour, shape)],
                                {"include": [_clause(shape, colour=colour)]}))
    placed: set = set()
    for relation in RELATIONS:  # "a red circle left of a blue square": the square is the target (clause 0)
        for a, b in (_two_apart(rng, placed) for _ in range(per_task // len(RELATIONS))):
            tasks["position"].append((relation_text(a, relation, b),
                                      [_geneval_object(*b), _geneval_object(*a)],
                                      {"include": [_clause(b[1]), _clause(a[1], position=[relation, 0])]}))
    for a, b in (_two_apart(rng, seen) for _ in range(per_task)):
        tasks["color_attr"].append((caption_for([a, b]), [_geneval_object(*a), _geneval_object(*b)],
                                    {"include": [_clause(a[1], colour=a[0]), _clause(b[1], colour=b[0])]}))
    return tasks


def geneval_suite() -> list[dict]:
    """The `geneval` suite: each task's prompts in a seeded order, the tasks taken in turn (so that `--limit N`
    covers all six), ids geneval/NNNN in file order."""
    rng = np.random.default_rng([SEED, 3])
    tasks = {tag: [rows[i] for i in rng.permutation(len(rows))] for tag, rows in geneval_tasks().items()}
    lines = []
    for turn in range(max(len(rows) for rows in tasks.values())):
        for tag, rows in tasks.items():
            if turn < len(rows):
                prompt, objects, spec = rows[turn]
                lines.append({"id": f"geneval/{len(lines):04d}", "suite": "geneval", "category": tag,
                              "prompt": prompt, "objects": objects,
                              "geneval": {"tag": tag, "classes": GENEVAL_CLASSES, **spec}})
    return lines


def write_suites(out: Path) -> dict:
    """Write the world's suites (and its `ci` subset and large-scale concept lists) into `out`."""
    from ..suites import ci_subset, write_jsonl

    suites = shapes_suites()
    suites["ci"] = ci_subset({k: v for k, v in suites.items() if k != "sepen_large"})
    suites["geneval"] = geneval_suite()  # not in `ci`: CI's regression check runs the presence suites
    out.mkdir(parents=True, exist_ok=True)
    (out / "sepen_large_concepts.json").write_text(json.dumps(large_scale_concepts(), indent=1) + "\n")
    for name, rows in suites.items():
        write_jsonl(out / f"{name}.jsonl", rows)
        print(f"shapes/{name}: {len(rows)} prompts")
    return suites
