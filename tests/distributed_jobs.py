"""Multi-process jobs on this machine, shared by tests/test_distributed.py and `make stress`.

Why one module: the tests and the stress loop (tests/stress_distributed.py) must run the very same
jobs and judge them the same way. Every job here ends cleanly or is reported:

- each process writes to a file of its own, never a pipe (a process blocked on a full 64 KiB pipe
  blocks the collective the others are in);
- when one process fails, the others are stopped at once (they would wait in a collective until
  the 30-minute timeout), and every descendant (spawned workers) with them, so no stray worker
  holds a port for the next job;
- a process "ends cleanly" when its exit status is 0 and its output has no "terminate called"
  (a Gloo group destroyed during interpreter shutdown aborts a worker with SIGABRT).

Ports: where a launcher can host its rendezvous on a port the system picks, the jobs use that
(torchrun --standalone; ``launch()`` behind ``--num-gpus``; a TCPStore held by the test process for
torchrun's c10d rendezvous, see test_distributed.py). SLURM's MASTER_PORT and Detectron2's
``--dist-url`` are different: every process must be given the port before any starts, rank 0 binds
it, and rank 0 cannot report a port of its own choosing (it blocks inside the store's constructor
until the other ranks have connected). For those, :func:`run_with_fresh_port` gives the job a port
the system just handed out and, if another process took it before rank 0 could bind it (rank 0
then fails with EADDRINUSE), runs the job again on a new one: a collision is detected and
retried, not hoped away.
"""
from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import psutil

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # generous: CI machines are sometimes shared (a run at load 4-5 needed > 300 s)
ABORTED = "terminate called"  # what libstdc++ prints before SIGABRT
ADDRESS_IN_USE = ("EADDRINUSE", "address already in use")

# One srun task: join the job's process group, report what Detectron2's comm sees, leave the
# group in finally (as every worker of the project does).
SLURM_JOIN = """
import json
from detectron2.utils import comm
from resbackbones.engine.distributed import (
    detect_launch_environment, init_process_group_from_environment, leave_process_group)
finished = False
try:
    env = detect_launch_environment()
    backend = init_process_group_from_environment(env, "cpu")
    print(json.dumps({"kind": env.kind, "backend": backend, "rank": comm.get_rank(),
                      "world": comm.get_world_size(), "local_rank": comm.get_local_rank(),
                      "local_size": comm.get_local_size(),
                      "gathered": comm.all_gather(env.rank)}), flush=True)
    finished = True
finally:
    leave_process_group(wait_for_others=finished)
"""


def clean_environment() -> Dict[str, str]:
    """This process's environment without any launcher's variables (a test may itself run under
    torchrun or SLURM), one thread per process and unbuffered output."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in (
               "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT", "GROUP_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def slurm_task_environments(master_port: int, tasks: int = 2) -> List[Dict[str, str]]:
    """What srun gives ``tasks`` tasks on as many nodes (one task each), the first node being
    this machine: a compressed node list, and the port exported as MASTER_PORT."""
    return [{**clean_environment(), "SLURM_PROCID": str(rank), "SLURM_STEP_ID": "0",
             "SLURM_NTASKS": str(tasks), "SLURM_LOCALID": "0", "SLURM_NODEID": str(rank),
             "SLURM_TASKS_PER_NODE": f"1(x{tasks})",
             "SLURM_STEP_NODELIST": f"localhost,node[02-{tasks + 1:02d}]",
             "SLURM_JOB_ID": "4242", "MASTER_PORT": str(master_port)} for rank in range(tasks)]


@dataclass
class JobResult:
    """What the processes of one job did: exit statuses and outputs in command order."""

    returncodes: List[int]
    outputs: List[str]
    seconds: float
    timed_out: bool = False

    def problems(self) -> List[str]:
        """One line per process that did not end cleanly (empty: the job ended cleanly)."""
        found = []
        if self.timed_out:
            found.append(f"the job did not end within its time limit ({self.seconds:.0f} s)")
        for index, (code, output) in enumerate(zip(self.returncodes, self.outputs)):
            if code != 0:
                found.append(f"process {index} exited with status {code}")
            if ABORTED in output:
                found.append(f"process {index} printed {ABORTED!r}")
        return found

    def report(self, tail: int = 4000) -> str:
        """The problems and the end of every process's output, for an assertion message."""
        parts = self.problems() or ["no problem"]
        for index, output in enumerate(self.outputs):
            parts.append(f"--- process {index} (status {self.returncodes[index]}) ---\n"
                         f"{output[-tail:]}")
        return "\n".join(parts)


def _stop_with_descendants(process: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started (Detectron2's spawned workers, torchrun's)."""
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    process.kill()
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()
    psutil.wait_procs(family, timeout=30)


def run_together(commands: Sequence[Sequence[str]],
                 environments: Optional[Sequence[Dict[str, str]]] = None,
                 timeout: float = TIMEOUT_S, cwd: Path = REPO) -> JobResult:
    """Start the commands together (the "machines" or tasks of one job) and wait for all.

    Each process writes to its own file. The first failure stops the others (they would wait for
    it in a collective); so does the timeout. Returns every exit status and output.
    """
    environments = environments or [clean_environment()] * len(commands)
    start = time.perf_counter()
    timed_out = False
    with tempfile.TemporaryDirectory(prefix="resbackbones-job-") as folder:
        paths = [Path(folder, f"process{index}.out") for index in range(len(commands))]
        processes: List[subprocess.Popen] = []
        try:
            for command, env, path in zip(commands, environments, paths):
                with open(path, "w") as output:
                    processes.append(subprocess.Popen(list(command), cwd=cwd, env=env,
                                                      stdout=output, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + timeout
            while any(p.poll() is None for p in processes):
                if any(p.returncode not in (None, 0) for p in processes):
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.1)
        finally:
            for process in processes:
                if process.poll() is None:
                    _stop_with_descendants(process)
        outputs = [path.read_text(errors="replace") for path in paths]
    return JobResult([p.returncode for p in processes], outputs, time.perf_counter() - start,
                     timed_out)


def port_just_handed_out() -> int:
    """A port the system handed out a moment ago; no longer held. Only for
    :func:`run_with_fresh_port`, which detects and retries the case where another process took
    it first."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_with_fresh_port(job: Callable[[int], Tuple[List[List[str]], List[Dict[str, str]]]],
                        attempts: int = 3, timeout: float = TIMEOUT_S) -> JobResult:
    """Run ``job(port)`` (its commands and environments; command 0 is rank 0, which binds the
    port) on a port the system just handed out; again on a new port, up to ``attempts`` times,
    when rank 0 could not bind it because another process took it in between (EADDRINUSE)."""
    for attempt in range(attempts):
        commands, environments = job(port_just_handed_out())
        result = run_together(commands, environments, timeout=timeout)
        collided = result.returncodes[0] != 0 and any(
            marker in result.outputs[0] for marker in ADDRESS_IN_USE)
        if not collided:
            return result
        print(f"attempt {attempt + 1}: rank 0's port was taken by another process; new port")
    return result
