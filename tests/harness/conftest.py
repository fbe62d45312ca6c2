import json

import pytest

SMALL_SUITE = [
    {"id": "t/0", "category": "two", "prompt": "a cat and a dog", "objects": [{"name": "cat"}, {"name": "dog"}]},
    {"id": "t/1", "category": "three", "prompt": "a red car and a bowl and a frog",
     "objects": [{"name": "car", "attribute": "red"}, {"name": "bowl"}, {"name": "frog"}]},
]


@pytest.fixture(scope="session")
def small_suite(tmp_path_factory):
    path = tmp_path_factory.mktemp("suites") / "small.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SMALL_SUITE))
    return path
