"""Several processes of one job on one run folder (torchrun, gloo on the CPU): they share the work without overlap
and end with the tables of one process; the folder's lock is the job's, so another process is refused, naming the
job's main process, and a job on a folder another process writes is refused and writes nothing."""

import fcntl
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import torch

import benchmark.generate as generate_module
from benchmark.run_folder import lock_run_folder
from benchmark.generate import RunConfig, RunError
from benchmark.records import read_jsonl


def _why_no_gloo():
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return "this torch has no gloo backend"
    try:
        socket.create_server(("127.0.0.1", 0)).close()
    except OSError as err:
        return f"no local TCP socket for torchrun's rendezvous: {err}"
    return None


WHY_NO_GLOO = _why_no_gloo()
needs_gloo = pytest.mark.skipif(WHY_NO_GLOO is not None, reason=str(WHY_NO_GLOO))


def torchrun(argv):
    """`torchrun --standalone --nproc_per_node 2 -m benchmark run ...` for the sweep's `python -m benchmark run ...`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *argv[1:]]


def children(pid):
    """The processes whose parent is `pid` (torchrun's workers)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


@needs_gloo
@pytest.mark.slow
def test_two_nodes_with_a_rendezvous_make_each_image_once_and_the_tables_of_one(sweep, uninterrupted, tmp_path):
    """docs/run_folder.md's several-machine command, as two "nodes" on this machine (one process each, a c10d
    rendezvous on localhost, one shared folder)."""
    out = tmp_path / "run"
    argv = sweep.command(uninterrupted["model"], uninterrupted["suite"], out, uninterrupted["cache"])
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    nodes = []
    for _ in range(2):  # the rendezvous numbers the nodes
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "two-nodes",
                   *argv[1:]]
        nodes.append(subprocess.Popen(command, env=sweep.environment(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [node.communicate(timeout=900)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-2000:] for log in logs)
    assert sweep.problems(out, uninterrupted["out"]) == []  # each image once, the tables of one process
    assert sorted(r["prompt_id"] for r in read_jsonl(out / "finetune.jsonl")) == ["t/0", "t/1"]


@needs_gloo
@pytest.mark.slow
def test_two_processes_make_each_image_once_and_the_tables_of_one(sweep, uninterrupted, tmp_path):
    out = tmp_path / "run"
    argv = sweep.command(uninterrupted["model"], uninterrupted["suite"], out, uninterrupted["cache"])
    with open(tmp_path / "log", "w") as log:
        job = subprocess.Popen(torchrun(argv), env=sweep.environment(), stdout=log, stderr=subprocess.STDOUT)
        try:
            holder = None
            deadline = time.monotonic() + 600
            while job.poll() is None and time.monotonic() < deadline:
                lock = out / generate_module.LOCK_NAME
                named = re.fullmatch(r"process (\d+)", lock.read_text()) if lock.exists() else None
                if named and sweep.images(out):
                    holder = int(named[1])
                    workers = children(job.pid)
                    # the job's main process holds the lock, and another process is refused, naming it
                    with pytest.raises(RunError, match=f"being written by process {holder}:"):
                        lock_run_folder(out)
                    break
                time.sleep(0.005)
            assert holder is not None, "the job ended before the lock could be tried"
            assert len(workers) == 2 and holder in workers, (holder, workers)
            job.wait(timeout=600)
        finally:
            if job.poll() is None:
                job.kill()
    assert job.returncode == 0, (tmp_path / "log").read_text()[-3000:]
    # one score line per image: an image made by both processes would have two
    assert sweep.problems(out, uninterrupted["out"]) == []
    finetunes = [r["prompt_id"] for r in read_jsonl(out / "finetune.jsonl")]
    assert sorted(finetunes) == ["t/0", "t/1"]  # each prompt's SepEn checkpoint prepared by one process


@needs_gloo
@pytest.mark.slow
def test_a_job_on_a_folder_another_process_writes_is_refused_and_writes_nothing(sweep, uninterrupted, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / generate_module.LOCK_NAME, "a+") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("process 4242")
        holder.flush()
        argv = sweep.command(uninterrupted["model"], uninterrupted["suite"], out, uninterrupted["cache"])
        done = subprocess.run(torchrun(argv), env=sweep.environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert f"{out} is being written by process 4242" in done.stderr, done.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == [generate_module.LOCK_NAME]  # no image, score or settings


def test_the_processes_wait_for_the_lock_and_list_the_same_work(tiny_model_dir, small_suite, tmp_path, monkeypatch):
    """The main process of a job takes the lock and moves damaged images aside before any process lists what is
    missing, and every process has listed it before any writes an image (else the lists, and the shares, could
    differ: an image made twice or by none); the settings are written before the other processes' images."""
    out = tmp_path / "run"
    events = []

    class MainOfTwo:
        num_processes, process_index, is_main_process, device = 2, 0, True, torch.device("cpu")

        def wait_for_everyone(self):
            events.append("wait" + (" (settings written)" if (out / "run_config.json").exists() else ""))

    def traced(name, function):
        def call(*args, **kwargs):
            events.append(name)
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(generate_module, "_distributed", lambda device: MainOfTwo())
    for name, attribute in (("lock", "lock_run_folder"), ("quarantine", "quarantine_damaged"),
                            ("list", "split_units"), ("image", "write_image")):
        monkeypatch.setattr(generate_module, attribute, traced(name, getattr(generate_module, attribute)))
    generate_module.run(RunConfig(suite=str(small_suite), model=str(tiny_model_dir), seeds=[0], steps=1,
                                  out=out, progress=False))
    assert events[:events.index("image")] == ["lock", "quarantine", "wait", "list", "wait (settings written)"]


@needs_gloo
@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_killing_the_launcher_ends_torchrun_and_its_ranks(sweep, uninterrupted, tmp_path):
    """`run --processes 2` killed with SIGKILL (a closed terminal, an OOM kill): its torchrun and both ranks end."""
    import signal

    out = tmp_path / "run"
    argv = sweep.command(uninterrupted["model"], uninterrupted["suite"], out, uninterrupted["cache"])
    long = ["--seeds", "0-99", "--steps", "20"]  # a job that outlives the checks below by minutes
    launcher = subprocess.Popen(argv + long + ["--processes", "2"], env=sweep.environment(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    job = []
    while time.monotonic() < deadline and len(job) < 3:  # torchrun, then its two ranks
        torchrun = children(launcher.pid)
        job = torchrun + [rank for pid in torchrun for rank in children(pid)]
        time.sleep(0.05)
    assert len(job) == 3, f"the job did not start: {job}"
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(map(running, job)):
        time.sleep(0.1)
    alive = [pid for pid in job if running(pid)]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert alive == [], f"still running after the launcher was killed: {alive}"


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@needs_gloo
@pytest.mark.slow
def test_a_refusal_met_by_the_ranks_is_one_line_and_exit_2(sweep, uninterrupted, tmp_path):
    """A refusal that needs the model (here: the folder's images were made with other steps) is met by both ranks
    after they load it: the launcher prints it once, without torchrun's failure report, and exits 2."""
    out = tmp_path / "run"
    argv = sweep.command(uninterrupted["model"], uninterrupted["suite"], out, uninterrupted["cache"])
    first = argv + ["--methods", "plain", "--seeds", "0", "--processes", "1"]
    subprocess.run(first, env=sweep.environment(), check=True, capture_output=True, timeout=600)
    again = first[:-1] + ["2", "--steps", "3"]
    done = subprocess.run(again, env=sweep.environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("running as 2 processes") and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors == lines[-1:], lines  # once, and last: no failure report after it
    assert errors[0].startswith(f"error: {out} holds a run made with other steps"), errors
