"""A run folder and what may be written into it: the marker that makes a folder a run's, the lock held while a run
writes, and the refusals that keep one folder to one suite and one value of each setting that changes an image
(docs/run_folder.md). Every check here runs before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from .records import CONFIG_NAME, id_folder, read_record, read_run_config, write_json
from .suites import SuitePrompt

# settings that change an image: a run folder holds images of one value of each
IMAGE_SETTINGS = ("model", "steps", "guidance", "sampling", "scheduler", "method_keys", "dtype")
# ... of which older run folders did not record these: compared only where the folder has them
LATER_SETTINGS = ("sampling", "scheduler", "method_keys")
# per method: compared for the methods both the folder and the command have (a folder can gain methods)
PER_METHOD_SETTINGS = ("sampling", "method_keys")
# what run_config.json records per method (a folder that gains a method records its own)
PER_METHOD_RECORDS = ("sampling", "options", "notes", "method_keys", "experimental")
LOCK_NAME = ".lock"
# written first into every run folder: `run` writes only into a folder that has it, or into a new or empty one
RUN_MARKER = ".benchmark-run"
RUN_FORMAT = 1


class RunError(ValueError):
    """A run that cannot start (bad input); nothing has been written when it is raised."""


def check_run_folder_is_ours(out: Path) -> None:
    """`--out` is a new or empty folder, or a run folder (its marker, or the `run_config.json` of a folder made
    before markers): never a folder of other files, whose `results.json` or `report/` a run would overwrite."""
    out = Path(out)
    if out.resolve() in (Path(out.resolve().anchor), Path.home().resolve()):
        raise RunError(f"--out {out} is the filesystem root or your home folder: pass a folder for this run "
                       "(e.g. runs/NAME)")
    if not out.exists():
        return
    if not out.is_dir():
        raise RunError(f"--out {out} is a file: pass a folder for this run")
    if (out / CONFIG_NAME).is_file():
        read_run_config(out)  # a damaged one is named now, before a model is loaded
        return
    if (out / RUN_MARKER).is_file():
        return
    ours = (LOCK_NAME, RUN_MARKER, f".{RUN_MARKER}.tmp")  # the lock, the marker (or its write cut short by a kill)
    others = sorted(p.name for p in out.iterdir() if p.name not in ours)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise RunError(f"--out {out} holds files that are not a benchmark run's ({shown}): pass a new or empty "
                       "folder; a run writes only into its own folders")


def check_suite_matches(out: Path, suite: str, prompts: list[SuitePrompt]) -> None:
    """A run folder holds one suite: another suite, or other prompts under this suite's ids (an edited file), is
    refused before anything is written; the folder's images would be counted as these prompts'."""
    if not out.is_dir():
        return
    if (out / CONFIG_NAME).is_file():
        held = str(read_run_config(out).get("suite", suite))
        if Path(held).stem != Path(suite).stem:
            raise RunError(f"{out} holds a run of suite {Path(held).stem} and this command's suite is "
                           f"{Path(suite).stem}: pass another --out to keep both")
    for item in prompts:
        for path in sorted((out / "images").glob(f"*/{id_folder(item.id)}/*.png"))[:1]:
            try:
                record = read_record(path)
            except (OSError, SyntaxError, ValueError, KeyError):
                continue  # set aside and made again by the run
            if "line_sha256" in record:
                same = record["line_sha256"] == item.line_sha256
            else:  # a record made before line hashes: its text
                same = (record.get("prompt"), record.get("objects")) == (item.prompt, [vars(o) for o in item.objects])
            if not same:
                raise RunError(f"{out} holds images of prompt {item.id} made from another suite line "
                               f"({record.get('prompt')!r}; this suite's: {item.prompt!r}): pass another --out for "
                               "this suite, or run the folder's own suite file")


def mark_run_folder(out: Path) -> None:
    """The marker that makes `out` a run folder (written before anything else of the run)."""
    if not (out / RUN_MARKER).is_file():
        write_json(out / RUN_MARKER, {"format": RUN_FORMAT}, indent=None)


def check_same_settings(out: Path, settings: dict) -> None:
    """The folder's images were made with the settings that change an image (`IMAGE_SETTINGS`) as `settings`
    (the run's config with its scheduler and method keys), or the run is refused."""
    if not (out / CONFIG_NAME).exists():
        return
    saved = read_run_config(out)
    saved.setdefault("dtype", "float32")  # a folder made before the precision was recorded: every run was fp32
    # the sampler comes with the model folder, so the same --model can sample differently after an edit
    wanted = dict(settings)
    keys = [key for key in IMAGE_SETTINGS if key in saved or key not in LATER_SETTINGS]
    # a folder can gain methods: the settings of the methods it already holds must be the same
    for key in PER_METHOD_SETTINGS:
        common = set(saved.get(key) or {}) & set(wanted.get(key) or {})
        saved[key] = {m: v for m, v in (saved.get(key) or {}).items() if m in common}
        wanted[key] = {m: v for m, v in (wanted.get(key) or {}).items() if m in common}
    differ = [key for key in keys if saved.get(key) != wanted.get(key)]
    if differ:
        raise RunError(f"{out} holds a run made with other {', '.join(differ)} "
                       f"({', '.join(f'{k}={saved.get(k)!r}' for k in differ)}); pass another --out to keep both")


def stored_described(out: Path) -> dict:
    """The metric conventions a run folder's scores were made with (empty for a new folder)."""
    return read_run_config(out).get("metrics_described", {}) if (out / CONFIG_NAME).exists() else {}


def lock_run_folder(out: Path) -> FileLock:
    """An exclusive lock on the run folder, held while the returned lock lives; a second `run` on it is refused,
    naming the first (its images would race with ours). The lock file holds its holder's process id."""
    lock = FileLock(out / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = (out / LOCK_NAME).read_text().strip() or "another process"
        raise RunError(f"{out} is being written by {holder}: wait for it to finish (then rerun to complete "
                       "anything missing), or pass another --out") from None
    (out / LOCK_NAME).write_text(f"process {os.getpid()}")
    return lock
