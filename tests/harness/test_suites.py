import filecmp
import json
import os
import random
from collections import Counter

import pytest

from benchmark.build_suites import SEED, multi_object, polysemy, single_object, two_object
from benchmark.shapes.suites import write_suites as write_shapes_suites
from benchmark.build_suites import main as build_suites
from benchmark.suites import PROMPTS_DIR, SuiteError, available_suites, load_suite
from sae.models import clip_tokenizer
from sae.tokens import find_token_indices


def test_published_sets_have_their_sizes_and_categories():
    ae = load_suite("ae276")
    assert Counter(p.category for p in ae) == {"animal_animal": 66, "animal_object": 144, "object_object": 66}
    large = load_suite("sepen_large")
    assert Counter(p.category for p in large) == {"seen_seen": 100, "seen_unseen": 80, "unseen_unseen": 20}
    assert ae[0].prompt == "a elephant and a rabbit"  # verbatim, as published
    red_car = next(p for p in ae if p.prompt == "a monkey and a red car")
    assert red_car.objects[1].name == "car" and red_car.objects[1].attribute == "red"


def test_multi_object_suite_has_three_and_four_objects():
    counts = Counter(len(p.objects) for p in load_suite("multi_object"))
    assert set(counts) == {3, 4} and counts[4] > 0


def test_every_object_word_is_found_in_its_prompt():
    tokenizer = clip_tokenizer()
    for name in available_suites():
        for item in load_suite(name):
            groups = find_token_indices(tokenizer, item.prompt, item.object_words)
            assert len(groups) == len(item.objects), item.id


def test_polysemy_objects_name_their_sense():
    mice = [o for p in load_suite("polysemy") for o in p.objects if o.name == "mouse"]
    assert {o.phrase for o in mice} == {"mouse (animal)", "computer mouse"}


def test_ci_subset_covers_every_category_of_every_suite():
    ci = load_suite("ci")
    for name in set(available_suites()) - {"ci"}:
        assert {p.category for p in load_suite(name)} <= {p.category for p in ci if p.suite == name}


def test_drawn_and_hand_written_suites_regenerate_as_committed(tmp_path):
    rng = random.Random(SEED)
    drawn = {"single_object": single_object(rng), "two_object": two_object(rng), "multi_object": multi_object(rng),
             "polysemy": polysemy()}
    for name, rows in drawn.items():
        committed = [json.loads(line) for line in (PROMPTS_DIR / f"{name}.jsonl").read_text().splitlines()]
        assert rows == committed, name
    write_shapes_suites(tmp_path)
    for path in tmp_path.glob("*.jsonl"):
        assert filecmp.cmp(path, PROMPTS_DIR / "shapes" / path.name, shallow=False), path.name


def test_build_script_regenerates_the_committed_files(tmp_path):
    published = os.environ.get("SAE_PUBLISHED_DATA")
    if not published:
        pytest.skip("set SAE_PUBLISHED_DATA to the folder holding ae_prompts.json and sepen_large_scale.json")
    assert build_suites(["--published-data", published, "--out", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written, "the build wrote nothing"
    for relative in written:
        assert filecmp.cmp(tmp_path / relative, PROMPTS_DIR / relative, shallow=False), relative


@pytest.mark.parametrize("content, message", [
    ("", "holds no prompts"),
    ("{not json\n", "not a suite line"),
    ('{"id": "a", "prompt": "a cat", "objects": []}\n', "lists no objects"),
    ('{"id": "a", "prompt": "a cat", "objects": [{"name": "cat"}]}\n' * 2, "duplicate prompt id"),
])
def test_bad_suite_files(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(SuiteError, match=message):
        load_suite(str(path))


def test_unknown_suite_lists_the_known_ones():
    with pytest.raises(SuiteError, match="unknown suite 'nope'.*multi_object"):
        load_suite("nope")
