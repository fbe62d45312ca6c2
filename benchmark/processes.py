"""`run --processes N`: one command split across N local processes.

A small model on the CPU keeps two cores busier as two one-thread processes than as one two-thread process
(its kernels are too small for intra-op threads to pay), so `run` on the CPU can start itself again under
torchrun, which gives each process one thread and the ranks that `benchmark.generate` splits the work by
(docs/run_folder.md, "Several processes"). torchrun is the launcher made for this; what is ours is deciding when to
use it, passing the same command line on, and ending as one process would: a refusal the ranks meet is printed once
and exits 2, without torchrun's failure report (`say`, `torchrun`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

LAUNCHER_VARIABLES = ("LOCAL_RANK", "WORLD_SIZE")  # set by torchrun and accelerate in every process they start


def launched() -> bool:
    """Whether this process was started by a launcher (then it is one rank of a job and never starts another)."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


AUTO_LIMIT = 8  # each process holds its own torch and model (about half a GB): "auto" stops at this many


def resolve_processes(value: str | int, on_cpu: bool) -> int:
    """`--processes`: a number, or "auto" (one per CPU core, at most `AUTO_LIMIT`, when the run is on the CPU;
    else 1)."""
    if str(value) == "auto":
        return min(cpu_cores(), AUTO_LIMIT) if on_cpu else 1
    try:
        processes = int(value)
    except ValueError:
        raise ValueError(f"--processes {value!r}: give a number of processes or auto") from None
    if processes < 1:
        raise ValueError(f"--processes {processes}: give N >= 1 (or auto)")
    return processes


def _end_with_parent() -> None:
    """In torchrun's process, before it starts: Linux sends it SIGTERM when this launcher dies, however it dies
    (SIGKILL included), and torchrun then stops its ranks; without it, killing the launcher left the job running."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# What a rank says when it stops for a refusal or Ctrl-C goes to a file of the launcher's, which prints each
# distinct line once: every rank meets the same refusal, and torchrun's own failure report would bury it.
SAY_VARIABLE = "BENCHMARK_RANK_LINES"


def say(line: str) -> None:
    """Print a command's closing line (a refusal, an interruption): from a rank of `relaunch`, to the launcher."""
    folder = os.environ.get(SAY_VARIABLE)
    if folder and launched() and os.path.isdir(folder):
        with open(os.path.join(folder, f"rank{os.environ.get('RANK', '0')}"), "a") as handle:
            handle.write(line + "\n")
    else:
        print(line, file=sys.stderr)


def relaunch(argv: list[str], processes: int) -> int:
    """Run `python -m benchmark ARGV` as `processes` torchrun ranks on this machine and return its exit code (a
    rank's refusal: 2, printed here once). A thread count already set in OMP_NUM_THREADS is kept (it decides the
    last bits of CPU images)."""
    with tempfile.TemporaryDirectory(prefix="benchmark-ranks-") as lines:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), SAY_VARIABLE: lines}
        command = [sys.executable, "-m", "benchmark.processes", "--standalone", f"--nproc_per_node={processes}",
                   "-m", "benchmark", *argv]
        print(f"running as {processes} processes (torchrun, {env['OMP_NUM_THREADS']} thread(s) each; --processes 1 "
              "for one); the progress bar counts the main process's share", file=sys.stderr)
        job = subprocess.Popen(command, env=env, preexec_fn=_end_with_parent if sys.platform == "linux" else None)
        try:
            code = job.wait()
        except KeyboardInterrupt:  # Ctrl-C reached torchrun too: it stops its ranks; wait for them
            job.wait()
            raise
        said = [path.read_text().splitlines() for path in sorted(Path(lines).glob("rank*"))]
        for line in dict.fromkeys(line for rank in said for line in rank):
            print(line, file=sys.stderr)
        return code


def torchrun(args: list[str]) -> int:
    """torchrun (its own command line), without its failure report: a rank that stopped has said why (a refusal in
    one line, through `say`; a crash in its own traceback). Returns the first failed rank's exit code."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(args))
    except ChildFailedError as err:
        code = err.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code  # a rank ended by signal N: 128 + N, as a shell reports it
    except KeyboardInterrupt:
        return 130
    except SignalException as err:  # the launcher ended (`_end_with_parent`) or the job was stopped
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":  # the launcher's torchrun (`relaunch`)
    sys.exit(torchrun(sys.argv[1:]))
