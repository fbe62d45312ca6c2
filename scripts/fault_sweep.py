"""SIGKILL `python -m benchmark run` at many points, run the same command again to completion after each kill, and
check that the run folder ends as an uninterrupted run's.

    python scripts/fault_sweep.py                          # the named points and 10 random times, tiny model
    python scripts/fault_sweep.py --random 50 --kills 3    # 50 random times, each rerun killed twice more

Each point gets a fresh run folder (the SepEn checkpoint cache is shared, trained by the uninterrupted run). The
named points: after 1, 3 and 7 images (7: the first of the second method), while an image waits for its score,
while the tables are written and while the HTML report is written; then seeded random times across a whole run.
After the final rerun it checks: one image per (method, prompt, seed) with the same pixels, one record each in
`samples.jsonl`, one whole score line per image and metric, `summary.csv`, `summary.md`, `paired.csv` and
`results.json` (timings and the folder's path aside) equal to the uninterrupted run's, no temporary or damaged
file left. Exits 1 when any point fails. tests/faults/test_kill_sweep.py runs the named points.

The runs use a tiny random model written here (or --model), the tests' two-prompt suite, methods plain and sepen,
seeds 0-2, batch size 2 (so a kill can split a batch), 2 denoising steps, one thread per process, and a test
metric (tests/faults/slow_metric.py) that takes a while per batch as real metrics do.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRIC = "slow_metric:SlowBrightness"
SUITE = [
    {"id": "t/0", "category": "two", "prompt": "a cat and a dog", "objects": [{"name": "cat"}, {"name": "dog"}]},
    {"id": "t/1", "category": "three", "prompt": "a red car and a bowl and a frog",
     "objects": [{"name": "car", "attribute": "red"}, {"name": "bowl"}, {"name": "frog"}]},
]
IMAGES = 2 * 2 * 3  # methods x prompts x seeds


def command(model, suite, out, cache, html: bool = False) -> list[str]:
    argv = [sys.executable, "-m", "benchmark", "run", "--suite", str(suite), "--model", str(model),
            "--methods", "plain,sepen", "--seeds", "0-2", "--steps", "2", "--batch-size", "2",
            "--metrics", METRIC, "--sepen-steps", "2", "--sepen-lr", "1e-3", "--checkpoint-cache", str(cache),
            "--device", "cpu", "--no-progress", "--out", str(out)]
    return argv + (["--attention-prompts", "0"] if html else ["--no-html"])


def environment() -> dict:
    # one thread per process: the same pixels in every run (another thread count can move a pixel by one 8-bit
    # level, as another batch size can), and torchrun's processes get one each too
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "faults"),
                            os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


def images(out: Path) -> list[Path]:
    return sorted((out / "images").glob("*/*/*.png"))


def image_key(out: Path, path: Path) -> tuple:
    method, prompt, name = path.relative_to(out / "images").parts
    return method, prompt, int(name.removesuffix(".png"))


def score_lines(out: Path) -> list[dict]:
    """The whole lines of every per-image score file (a torn last line is left out)."""
    rows = []
    for path in sorted((out / "scores").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                rows.append({"file": path.name, **json.loads(line)})
            except json.JSONDecodeError:
                pass
    return rows


def state(out: Path) -> dict:
    """What a kill left: images, whole score lines, and which of the tables and the report exist."""
    made = len(images(out))  # before the scores: a score never comes before its image
    return {"images": made, "scored": len(score_lines(out)), "samples": (out / "samples.jsonl").exists(),
            "results": (out / "results.json").exists(), "report": (out / "report" / "index.html").exists()}


def _waiting_for_scores(out: Path) -> bool:
    made = len(images(out))  # counted first: lines only grow, so fewer lines than images is a true moment
    return made >= 5 and made > len(score_lines(out))


# name -> (when to kill, given the run folder; did the kill land there, given `state` after it)
KILL_POINTS = {
    "after 1 image": (lambda out: len(images(out)) >= 1, lambda s: 1 <= s["images"] < IMAGES),
    "after 3 images": (lambda out: len(images(out)) >= 3, lambda s: 3 <= s["images"] < IMAGES),
    "after 7 images": (lambda out: len(images(out)) >= 7, lambda s: 7 <= s["images"] < IMAGES),
    "while scoring": (_waiting_for_scores, lambda s: s["scored"] < s["images"]),
    "writing the tables": (lambda out: (out / "samples.jsonl").exists(),
                           lambda s: s["images"] == IMAGES and not s["report"]),
    "writing the HTML report": (lambda out: (out / "results.json").exists(), lambda s: not s["report"]),
}
HTML_POINTS = {"writing the HTML report"}  # run with the HTML report on (attention maps off: they are slow)


def kill_when(argv: list[str], out: Path, condition, timeout: float = 600) -> dict | None:
    """Start the run and SIGKILL it as soon as `condition(out)` holds; what it left (`state`), or None when it ended
    first."""
    process = subprocess.Popen(argv, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if out.exists() and condition(out):
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if process.poll() is None:  # killed above, timed out, or the condition raised
            process.kill()
        process.wait()
    return state(out) if process.returncode == -signal.SIGKILL else None


def kill_after(argv: list[str], out: Path, seconds: float) -> dict | None:
    start = time.monotonic()
    return kill_when(argv, out, lambda _: time.monotonic() - start >= seconds)


def finish(argv: list[str], timeout: float = 600) -> float:
    """Run to completion; its wall seconds. Raises with the end of its stderr when it fails."""
    start = time.monotonic()
    done = subprocess.run(argv, env=environment(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[1:5])} ... exited {done.returncode}:\n{done.stderr[-3000:]}")
    return time.monotonic() - start


def _results(out: Path) -> dict:
    results = json.loads((out / "results.json").read_text())
    del results["timings"]  # measured seconds
    for key in ("out", "html", "attention_prompts"):  # where the folder is and whether it has an HTML report
        results["config"].pop(key, None)
    return results


def problems(out: Path, straight: Path, html: bool = False) -> list[str]:
    """How `out` differs from the uninterrupted run `straight`; empty when it ends as that run did."""
    import numpy as np
    from PIL import Image

    found = []
    expected = sorted(image_key(straight, p) for p in images(straight))
    made = sorted(image_key(out, p) for p in images(out))
    if made != expected:
        found.append(f"images: missing {sorted(set(expected) - set(made))}, extra {sorted(set(made) - set(expected))}")
    for path in images(straight):
        other = out / path.relative_to(straight)
        if other.exists() and not np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(other))):
            found.append(f"{other.relative_to(out)}: other pixels")
    left = [str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith((".tmp", ".damaged"))]
    if left:
        found.append(f"left behind: {left}")
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    listed = Counter((r["method"], r["prompt_id"].replace("/", "_"), r["seed"]) for r in samples)
    if sorted(listed) != expected or set(listed.values()) != {1}:
        found.append(f"samples.jsonl: {len(samples)} records, {dict((k, n) for k, n in listed.items() if n > 1)} "
                     "listed twice" if samples else "samples.jsonl: empty")
    reference = [json.loads(line) for line in (straight / "samples.jsonl").read_text().splitlines()]
    if [{k: v for k, v in r.items() if k != "seconds"} for r in samples] != \
            [{k: v for k, v in r.items() if k != "seconds"} for r in reference]:
        found.append("samples.jsonl: other records or scores than the uninterrupted run's")
    for name in sorted({row["file"] for row in score_lines(straight)}):
        scored = Counter((r["method"], r["prompt_id"], r["seed"]) for r in score_lines(out) if r["file"] == name)
        wanted = Counter((r["method"], r["prompt_id"], r["seed"]) for r in score_lines(straight) if r["file"] == name)
        if scored != wanted:
            found.append(f"scores/{name}: missing {sorted(set(wanted) - set(scored))}, "
                         f"twice {sorted(k for k, n in scored.items() if n > 1)}")
    for name in ("summary.csv", "summary.md", "paired.csv"):
        if (out / name).read_text() != (straight / name).read_text():
            found.append(f"{name} differs from the uninterrupted run's")
    if _results(out) != _results(straight):
        found.append("results.json differs from the uninterrupted run's (timings and path aside)")
    if html and not (out / "report" / "index.html").exists():
        found.append("report/index.html missing")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a diffusers pipeline folder (default: a tiny random one)")
    parser.add_argument("--work", type=Path, help="where the run folders go (default: a temporary folder)")
    parser.add_argument("--random", type=int, default=10, help="random kill times (0: the named points only)")
    parser.add_argument("--kills", type=int, default=1, help="kills per random point before the final rerun")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    work = args.work or Path(tempfile.mkdtemp(prefix="fault_sweep_"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from sae.models import write_tiny_model

        model = write_tiny_model(work / "tiny")
    suite = work / "suite.jsonl"
    suite.write_text("".join(json.dumps(row) + "\n" for row in SUITE))
    cache = work / "cache"
    straight = work / "straight"
    seconds = finish(command(model, suite, straight, cache))
    print(f"uninterrupted run: {seconds:.1f} s, {len(images(straight))} images")
    rng = random.Random(args.seed)
    points = [(name, None) for name in KILL_POINTS]
    points += [(f"random {i}", [rng.uniform(0, seconds) for _ in range(args.kills)]) for i in range(args.random)]
    failed = 0
    for i, (name, times) in enumerate(points):
        out = work / f"point{i}"
        argv = command(model, suite, out, cache, html=name in HTML_POINTS)
        if times is None:
            condition, landed = KILL_POINTS[name]
            seen = [kill_when(argv, out, condition)]
            where = "ran to the end first" if seen[0] is None else \
                ("" if landed(seen[0]) else "landed elsewhere ")
        else:
            seen = [kill_after(argv, out, t) for t in times]
            where = ""
        finish(argv)
        found = problems(out, straight, html=name in HTML_POINTS)
        failed += bool(found)
        print(f"{name}: killed at {seen} {where}-> {'; '.join(found) or 'ok'}", flush=True)
    print(f"{len(points) - failed} of {len(points)} points end as the uninterrupted run; folders under {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
