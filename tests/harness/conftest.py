import json

import pytest


def _square_image(colour, size=64):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (240, 240, 240))
    ImageDraw.Draw(image).rectangle([size // 4, size // 4, size // 2, size // 2], fill=colour)
    return image


REPORT_PROMPTS = [  # (id, category, prompt, objects)
    ("r/0", "two", "a cat and a dog", [{"name": "cat"}, {"name": "dog"}]),
    ("r/1", "two", "a red car and a frog", [{"name": "car", "attribute": "red", "query": "red car"}, {"name": "frog"}]),
    ("r/2", "two", "a bowl and a cat", [{"name": "bowl"}, {"name": "cat"}]),
    ("r/3", "three", "a cat and a dog and a frog", [{"name": "cat"}, {"name": "dog"}, {"name": "frog"}]),
]


def make_report_run(out, model="not/a-local-model", methods=("plain", "sepen"), seeds=(0, 1)):
    """A finished run folder written by hand (no model): 64-px images with records, presence scores in which
    `plain` misses the last object of every prompt at seed 1, and one image (sepen, r/0, seed 0) unscored."""
    from benchmark.records import append_jsonl, image_path, write_image
    from benchmark.report import write_report

    out.mkdir(parents=True)
    (out / "run_config.json").write_text(json.dumps({
        "suite": "report_test", "model": str(model), "methods": list(methods), "seeds": list(seeds), "steps": 2,
        "guidance": 7.5, "options": {"sepen": {"steps": 2, "learning_rate": 1e-3, "finetune": {"batch_size": 1},
                                               "cache": str(out / "no_checkpoints")}}, "domain": "natural",
        "metrics": ["presence"], "metrics_described": {"presence": {
            "columns": {"presence_all": True, "presence_objects": True}, "convention": "hand-written scores"}}}))
    scores = []
    for m, method in enumerate(methods):
        for p, (pid, category, prompt, objects) in enumerate(REPORT_PROMPTS):
            for seed in seeds:
                record = {"method": method, "prompt_id": pid, "suite": "report_test", "category": category,
                          "prompt": prompt, "objects": objects, "seed": seed, "model": str(model), "steps": 2,
                          "guidance": 7.5, "seconds": 0.1, "batch": len(seeds)}
                write_image(image_path(out, method, pid, seed), _square_image((40 * p, 100 + 50 * m, 20 * seed)),
                            record)
                if (method, pid, seed) == (methods[-1], "r/0", seeds[0]):
                    continue
                queries = [o.get("query") or o["name"] for o in objects]
                missing = queries[-1:] if method == "plain" and seed == 1 else []
                scores.append({"method": method, "prompt_id": pid, "seed": seed, "values": {
                    "presence_all": float(not missing), "presence_objects": 1 - len(missing) / len(queries),
                    "presence_missing": ",".join(missing)}})
    append_jsonl(out / "scores" / "presence.jsonl", scores)
    write_report(out)
    return out


@pytest.fixture
def report_run(tmp_path):
    """`make_report_run` (a hand-written run folder); call it with the folder and options."""
    return make_report_run
