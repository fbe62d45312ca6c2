"""`run --processes N`: one command split across N local processes.

A small model on the CPU keeps two cores busier as two one-thread processes than as one two-thread process
(its kernels are too small for intra-op threads to pay), so `run` on the CPU can start itself again under
torchrun, which gives each process one thread and the ranks that `benchmark.generate` splits the work by
(docs/run_folder.md, "Several processes"). torchrun is the launcher made for this; what is ours is only deciding
when to use it and passing the same command line on.
"""

from __future__ import annotations

import os
import subprocess
import sys

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


def relaunch(argv: list[str], processes: int) -> int:
    """Run `python -m benchmark ARGV` as `processes` torchrun ranks on this machine and return its exit code.
    A thread count already set in OMP_NUM_THREADS is kept (it decides the last bits of CPU images)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "benchmark", *argv]
    print(f"running as {processes} processes (torchrun, {env['OMP_NUM_THREADS']} thread(s) each; --processes 1 "
          "for one); the progress bar counts the main process's share", file=sys.stderr)
    job = subprocess.Popen(command, env=env, preexec_fn=_end_with_parent if sys.platform == "linux" else None)
    try:
        return job.wait()
    except KeyboardInterrupt:  # Ctrl-C reached torchrun too: it stops its ranks; wait for them
        job.wait()
        raise
