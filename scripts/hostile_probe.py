"""Replay the hostile probe's cases of "nothing silently wrong" as a user would type them, and write what each does.

    python scripts/hostile_probe.py [--out results/hostile_probe.md] [--work DIR]

Each case is a real command line (`python -m benchmark ...`, `python -m sae ...`) in a fresh process: its exit
code, the lines it printed to stderr (progress bars left out) and, where the case is about files, whether they are
as they were. The default command's cases run as the README's does, on the shapes world with `--processes auto`
(two processes on a 2-core machine); the others on a tiny random model (`python -m sae tiny-model`). About five
minutes on a 2-core CPU. The tests in tests/faults/ check the same cases; this is their transcript.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAR = re.compile(r"\d+%\|")  # a progress bar's line


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def execute(argv: list[str], interrupt_after: float | None = None) -> tuple[int, list[str]]:
    """Run `python -m ARGV` from the repository; its exit code and stderr lines without progress bars."""
    job = subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if interrupt_after is not None:
        time.sleep(interrupt_after)
        job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=900)
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines()]
    return job.returncode, [line for line in lines if line and not BAR.search(line)]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def suite_file(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


SMALL = [{"id": "t/0", "category": "two", "prompt": "a cat and a dog", "objects": [{"name": "cat"}, {"name": "dog"}]},
         {"id": "t/1", "category": "two", "prompt": "a frog and a bowl",
          "objects": [{"name": "frog"}, {"name": "bowl"}]}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "hostile_probe.md")
    parser.add_argument("--work", type=Path, default=None,
                        help="a folder for the cases' files (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hostile-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "sae", "tiny-model", str(model)], cwd=ROOT, env=environment(),
                       check=True, capture_output=True)
    small = suite_file(work / "small.jsonl", SMALL)
    rows: list[tuple[str, str, int, list[str], str]] = []

    def case(what: str, argv: list[str], note: str = "", **kwargs) -> tuple[int, list[str]]:
        code, lines = execute(argv, **kwargs)
        rows.append((what, "python -m " + shlex.join(argv).replace(str(work), "$W"), code, lines, note))
        print(f"{code:4d}  {what}", file=sys.stderr)
        return code, lines

    def tiny(out: Path, *extra: str, suite: Path = small, model_dir: Path = model) -> list[str]:
        return ["benchmark", "run", "--suite", str(suite), "--model", str(model_dir), "--seeds", "0", "--steps", "1",
                "--metrics", "", "--no-html", "--no-progress", "--out", str(out), *extra]

    default = ["benchmark", "run", "--suite", "multi_object", "--limit", "1", "--steps", "2", "--no-progress", "--out"]
    # the README's command (shapes world, --processes auto: two processes here), refused before any rank starts
    for what, extra in [("unknown suite", ["--suite", "no_such_suite"]), ("--limit 0", ["--limit", "0"]),
                        ("--guidance nan", ["--guidance", "nan"]), ("--guidance 1e300", ["--guidance", "1e300"]),
                        ("--sepen-lr inf", ["--methods", "sepen", "--sepen-lr", "inf"]),
                        ("--sepen-steps 0", ["--methods", "sepen", "--sepen-steps", "0"]),
                        ("--steps 2000", ["--steps", "2000"]), ("--device nonsense", ["--device", "nonsense"]),
                        ("--device cuda without a GPU", ["--device", "cuda"]), ("--methods ,", ["--methods", ","]),
                        ("empty --sepen-checkpoint", ["--methods", "sepen", "--sepen-checkpoint", ""]),
                        ("--option of a bad value", ["--methods", "sepen", "--option",
                                                     'sepen.finetune={"batch_size": 0}']),
                        ("--attention-prompts -1", ["--attention-prompts", "-1"])]:
        out = work / f"default-{len(rows)}"
        case(f"default command, {what}", default + [str(out)] + extra)
        rows[-1] = (*rows[-1][:4], "nothing written" if not out.exists() else "FOLDER WRITTEN")
    case("--out /", default + ["/"])
    home = Path.home()
    case("--out $HOME", default + [str(home)])
    mine = work / "mine"
    (mine / "report").mkdir(parents=True, exist_ok=True)
    for name, text in {"results.json": '{"mine": 1}', "summary.csv": "a\n1\n", "report/index.html": "<p/>"}.items():
        (mine / name).write_text(text)
    before = snapshot(mine)
    case("--out a folder of the user's files", default + [str(mine)])
    rows[-1] = (*rows[-1][:4], "the user's files untouched" if snapshot(mine) == before else "USER FILES CHANGED")

    # suites whose lines say something else than the folder holds, or than the world can draw
    held = work / "held"
    execute(tiny(held))
    edited = suite_file(work / "edited" / "small.jsonl", [{**SMALL[0], "prompt": "a dog and a cat",
                                                           "objects": SMALL[0]["objects"][::-1]}, SMALL[1]])
    before = snapshot(held)
    case("same ids, other prompts (2 processes)", tiny(held, "--processes", "2", suite=edited))
    rows[-1] = (*rows[-1][:4], "images untouched" if snapshot(held) == before else "IMAGES CHANGED")
    other = suite_file(work / "other.jsonl", [{"id": "o/0", "prompt": "a frog and a cat",
                                               "objects": [{"name": "frog"}, {"name": "cat"}]}])
    case("another suite into a run folder", tiny(held, suite=other))
    for what, line in [("unknown object (shapes world)", {"id": "x/0", "prompt": "a dragon",
                                                          "objects": [{"name": "dragon"}]}),
                       ("unknown colour (shapes world)", {"id": "x/0", "prompt": "a magenta circle",
                                                          "objects": [{"name": "circle", "attribute": "magenta"}]}),
                       ("category that is a list", {"id": "x/0", "prompt": "a red circle", "category": ["a"],
                                                    "objects": [{"name": "circle", "attribute": "red"}]})]:
        path = suite_file(work / f"{what.split()[0]}{len(rows)}.jsonl", [line])
        case(what, ["benchmark", "run", "--suite", str(path), "--out", str(work / f"u{len(rows)}"), "--no-progress"])

    # images that are not what their paths say: set aside and made again in the same run
    two = work / "two"
    execute(tiny(two, "--seeds", "0-1"))
    victim = two / "images" / "plain" / "t_0" / "0001.png"
    victim.write_bytes((two / "images" / "plain" / "t_1" / "0001.png").read_bytes())
    case("an image copied over another's", tiny(two, "--seeds", "0-1"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2:len(data) // 2 + 16] = bytes(16)
    victim.write_bytes(bytes(data))
    case("an image damaged inside (still ends in IEND)", tiny(two, "--seeds", "0-1"))
    scores = held / "scores" / "x.jsonl"
    scores.parent.mkdir(exist_ok=True)
    scores.write_text('[1, 2]\n{"method": "plain"}\n')
    case("score lines of another shape", ["benchmark", "report", str(held)])

    # refusals only the ranks can meet (after the model loads), and Ctrl-C
    case("a folder made with other steps (2 processes)", tiny(held, "--processes", "2", "--steps", "3"))
    broken = work / "no-tokenizer"
    if not broken.exists():
        shutil.copytree(model, broken)
        shutil.rmtree(broken / "tokenizer")
    case("a model folder without tokenizer/ (2 processes)", tiny(work / "nt", "--processes", "2", model_dir=broken))
    case("Ctrl-C during the imports", ["benchmark", "ls", "suites"], interrupt_after=1.0)
    case("trace --prompts -3", ["benchmark", "trace", str(held), "--prompts", "-3"])
    settings = held / "run_config.json"
    whole = settings.read_text()
    settings.write_text(whole[: len(whole) // 2])
    case("a damaged run_config.json", ["benchmark", "report", str(held)])
    settings.write_text(whole)

    train = work / "train"
    base = ["sae", "train", "--model", str(model), "--prompt", "a cat and a dog", "--objects", "cat,dog",
            "--out", str(train)]
    execute(base + ["--steps", "10"])
    case("sae train --steps 5 into a finished 10-step folder", base + ["--steps", "5"])
    for flag in ("--steps", "--batch-size", "--checkpoint-every"):
        case(f"sae train {flag} 0", base[:-1] + [str(work / f"t{flag}"), flag, "0"])

    text = ["# Hostile probe: what each case does now", "",
            f"`python scripts/hostile_probe.py` on {time.strftime('%Y-%m-%d')}; `$W` is its work folder. Exit code 2: "
            "a refusal; 130: interrupted; 0: done. stderr without progress bars.", "",
            "| case | command | exit | stderr | files |", "|---|---|---|---|---|"]
    for what, command, code, lines, note in rows:
        shown = "<br>".join(line.replace("|", "\\|").replace(str(work), "$W") for line in lines[-3:])
        text.append(f"| {what} | `{command.replace('|', '/')}` | {code} | {shown} | {note} |")
    args.out.write_text("\n".join(text) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
