"""Processes started by torchrun or SLURM's ``srun``: detect them and join PyTorch's process group.

Detectron2 v0.6 knows one way to start distributed training, its own ``launch()``, which always
spawns ``--num-gpus`` processes itself. Under ``torchrun`` (torch.distributed.elastic) or under
``srun`` with one task per GPU the processes already exist: spawning again gives N x N processes,
and not spawning at all gives N unrelated jobs (detectron2 issues 706, 1706, 3446, 652, 753). This
module reads the launcher's environment into a :class:`LaunchEnvironment`, then does in the
existing process what Detectron2's ``launch()`` does in the processes it spawns: initialise the
default process group (``env://``), select the GPU of the local rank, and build the per-machine
group (``comm._LOCAL_PROCESS_GROUP``) that ``comm.get_local_rank()`` and ``create_ddp_model``
rely on. No launcher of our own: torchrun and srun start, watch and restart the processes.

Environment read (the first complete set wins):

- torchrun (or any ``env://`` launcher): RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
  GROUP_RANK (the machine), MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT.
- SLURM, inside an ``srun`` step with more than one task: SLURM_PROCID, SLURM_STEP_NUM_TASKS (or
  SLURM_NTASKS), SLURM_LOCALID, SLURM_NODEID, SLURM_STEP_TASKS_PER_NODE (or
  SLURM_TASKS_PER_NODE), the first host of SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST /
  SLURM_NODELIST; compressed lists such as ``gpu[01-04,07]`` are expanded here, without
  ``scontrol``), SLURM_JOB_ID and SLURM_RESTART_COUNT. MASTER_ADDR / MASTER_PORT in the
  environment take precedence; the default port is ``29500 + SLURM_JOB_ID % 1000`` so that two
  jobs whose first node is the same do not collide.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.engine import HookBase

__all__ = [
    "DEFAULT_MASTER_PORT",
    "leave_process_group",
    "LaunchEnvironment",
    "RankAgreementHook",
    "check_launch_arguments",
    "detect_launch_environment",
    "expand_slurm_nodelist",
    "init_process_group_from_environment",
    "launch",
    "process_group_backend",
    "ranks_agree_on_weights",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

DEFAULT_MASTER_PORT = 29500
# SLURM's default port: DEFAULT_MASTER_PORT + SLURM_JOB_ID % this (one port per job on a node).
SLURM_PORT_SPREAD = 1000
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class LaunchEnvironment:
    """How this process was started, as far as distributed training is concerned.

    Attributes:
        kind: "none" (a plain ``python``; Detectron2's ``--num-gpus`` flags apply), "torchrun" or
            "slurm" (the process is one of ``world_size`` already started).
        rank: global rank of this process.
        local_rank: rank on this machine (also the GPU index).
        world_size: number of processes in the job.
        local_world_size: number of processes on this machine.
        node_rank: index of this machine.
        master_addr: host of rank 0's TCP store.
        master_port: its port.
        restart_count: how many times the launcher has restarted the job (torchrun's
            ``--max-restarts``, SLURM's requeue); > 0 makes training resume on its own.
    """

    kind: str = "none"
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT
    restart_count: int = 0

    @property
    def external(self) -> bool:
        """True when a launcher (torchrun, srun) already started every process."""
        return self.kind != "none"


def _split_top_level(text: str) -> List[str]:
    """Split at commas that are not inside brackets: ``a[1,2],b`` -> ``a[1,2]``, ``b``."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"SLURM node list {text!r}: ']' without '['.")
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth:
        raise ValueError(f"SLURM node list {text!r}: '[' without ']'.")
    parts.append(text[start:])
    return [part for part in (p.strip() for p in parts) if part]


def _expand_range(text: str, whole: str) -> List[str]:
    values = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if not match:
            raise ValueError(f"SLURM node list {whole!r}: {item!r} is not a number or a range "
                             "like 01-04.")
        first, last = match.group(1), match.group(2) or match.group(1)
        if int(last) < int(first):
            raise ValueError(f"SLURM node list {whole!r}: range {item!r} runs backwards.")
        width = len(first) if first.startswith("0") else 0  # zero padding: 01-10 -> 01..10
        values += [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    return values


def expand_slurm_nodelist(nodelist: str) -> List[str]:
    """Host names of a SLURM host list, in order, as ``scontrol show hostnames`` prints them.

    Handles ``gpu[01-04,07]``, ``a[1-2],b3``, several bracket groups in one name
    (``rack[1-2]-n[1-2]``) and zero padding, without running ``scontrol`` (often missing inside
    containers).

    Raises:
        ValueError: unbalanced brackets or a malformed range; the message quotes the list.
    """
    hosts: List[str] = []
    for part in _split_top_level(nodelist):
        expansions = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", part):
            if not literal and not ranges:
                continue
            values = _expand_range(ranges, nodelist) if ranges else [""]
            expansions = [prefix + literal + value for prefix in expansions for value in values]
        hosts += expansions
    if not hosts:
        raise ValueError(f"SLURM node list {nodelist!r} names no host.")
    return hosts


def _tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """This node's task count from SLURM's ``2(x3),1`` notation (3 nodes of 2, then 1 of 1)."""
    counts: List[int] = []
    for item in tasks_per_node.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not match:
            raise ValueError(f"SLURM_TASKS_PER_NODE {tasks_per_node!r} is not like '4(x2),3'.")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    if node_id >= len(counts):
        raise ValueError(f"SLURM_NODEID {node_id} but SLURM_TASKS_PER_NODE {tasks_per_node!r} "
                         f"lists {len(counts)} nodes.")
    return counts[node_id]


def _int_variable(environ: Mapping[str, str], name: str, default: Optional[int] = None) -> int:
    value = environ.get(name)
    if value is None or value == "":
        if default is None:
            raise ValueError(f"Environment variable {name} is not set; the launcher should set "
                             "it (run under torchrun or srun, or unset RANK/SLURM_* variables).")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"Environment variable {name}={value!r} is not an integer.") from None


def _torchrun_environment(environ: Mapping[str, str]) -> LaunchEnvironment:
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not environ.get(name)]
    if missing:
        raise ValueError(f"RANK/WORLD_SIZE/LOCAL_RANK are set but {' and '.join(missing)} not: "
                         "env:// initialisation needs both (torchrun sets them; with another "
                         "launcher export them).")
    world_size = _int_variable(environ, "WORLD_SIZE")
    rank, local_rank = _int_variable(environ, "RANK"), _int_variable(environ, "LOCAL_RANK")
    local_world_size = _int_variable(environ, "LOCAL_WORLD_SIZE", 0) or world_size
    return LaunchEnvironment(
        kind="torchrun", rank=rank, local_rank=local_rank, world_size=world_size,
        local_world_size=local_world_size,
        node_rank=_int_variable(environ, "GROUP_RANK", rank // local_world_size),
        master_addr=environ["MASTER_ADDR"], master_port=_int_variable(environ, "MASTER_PORT"),
        restart_count=_int_variable(environ, "TORCHELASTIC_RESTART_COUNT", 0))


def _slurm_environment(environ: Mapping[str, str], world_size: int) -> LaunchEnvironment:
    node_id = _int_variable(environ, "SLURM_NODEID", 0)
    tasks_per_node = (environ.get("SLURM_STEP_TASKS_PER_NODE")
                      or environ.get("SLURM_TASKS_PER_NODE"))
    local_world_size = _tasks_on_node(tasks_per_node, node_id) if tasks_per_node else world_size
    master_addr = environ.get("MASTER_ADDR")
    if not master_addr:
        nodelist = (environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
                    or environ.get("SLURM_NODELIST"))
        if not nodelist:
            raise ValueError("SLURM: none of SLURM_STEP_NODELIST, SLURM_JOB_NODELIST, "
                             "SLURM_NODELIST is set, so rank 0's host is unknown; export "
                             "MASTER_ADDR.")
        master_addr = expand_slurm_nodelist(nodelist)[0]
    default_port = DEFAULT_MASTER_PORT + _int_variable(environ, "SLURM_JOB_ID", 0) % \
        SLURM_PORT_SPREAD
    return LaunchEnvironment(
        kind="slurm", rank=_int_variable(environ, "SLURM_PROCID"),
        local_rank=_int_variable(environ, "SLURM_LOCALID", 0), world_size=world_size,
        local_world_size=local_world_size, node_rank=node_id, master_addr=master_addr,
        master_port=_int_variable(environ, "MASTER_PORT", default_port),
        restart_count=_int_variable(environ, "SLURM_RESTART_COUNT", 0))


def detect_launch_environment(environ: Optional[Mapping[str, str]] = None) -> LaunchEnvironment:
    """Read how this process was started from ``environ`` (default: ``os.environ``).

    torchrun's variables win over SLURM's (``srun torchrun ...``, one task per node, is a
    torchrun job). SLURM counts only inside an ``srun`` step (SLURM_STEP_ID set) of more than
    one task: a batch script, or ``srun -n 1 python tools/train_net.py --num-gpus 8``, keeps
    Detectron2's own launcher.

    Raises:
        ValueError: the variables are incomplete or inconsistent; the message names them.
    """
    environ = os.environ if environ is None else environ
    if all(environ.get(name) for name in TORCHRUN_VARIABLES):
        launch_env = _torchrun_environment(environ)
    elif environ.get("SLURM_PROCID") and environ.get("SLURM_STEP_ID") is not None:
        tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS") or "1"
        world_size = _int_variable({"SLURM_NTASKS": tasks}, "SLURM_NTASKS")
        if world_size <= 1:
            return LaunchEnvironment()
        launch_env = _slurm_environment(environ, world_size)
    else:
        return LaunchEnvironment()
    if not (0 <= launch_env.rank < launch_env.world_size
            and 0 <= launch_env.local_rank < launch_env.local_world_size):
        raise ValueError(f"Inconsistent {launch_env.kind} environment: rank {launch_env.rank} of "
                         f"{launch_env.world_size}, local rank {launch_env.local_rank} of "
                         f"{launch_env.local_world_size}.")
    return launch_env


def check_launch_arguments(launch_env: LaunchEnvironment, num_gpus: int, num_machines: int,
                           machine_rank: int) -> None:
    """Refuse Detectron2's own launcher flags inside a torchrun/srun job.

    Under torchrun, ``--num-gpus 8`` would spawn 8 processes in each of torchrun's processes.

    Raises:
        ValueError: naming the flags and which launcher to use instead.
    """
    if not launch_env.external:
        return
    flags = [f"{flag} {value}" for flag, value, default in (
        ("--num-gpus", num_gpus, 1), ("--num-machines", num_machines, 1),
        ("--machine-rank", machine_rank, 0)) if value != default]
    if flags:
        per_node = ("torchrun --nproc-per-node" if launch_env.kind == "torchrun"
                    else "srun --ntasks-per-node")
        raise ValueError(
            f"{' '.join(flags)} given, but this process was started by {launch_env.kind} "
            f"(rank {launch_env.rank} of {launch_env.world_size}), which already started every "
            f"process. Use one launcher: either drop {' '.join(flags)} and set the processes per "
            f"machine with {per_node}, or run tools/train_net.py with plain python and "
            "Detectron2's --num-gpus/--num-machines/--machine-rank/--dist-url.")


def process_group_backend(device: str) -> str:
    """NCCL for a run on CUDA, Gloo otherwise (a CPU run on a GPU machine included).

    One backend per run, chosen from the run's device: Detectron2 v0.6's ``comm`` accepts only a
    plain "nccl" or "gloo" group (not the "cpu:gloo,cuda:nccl" form), and its object collectives
    already use a separate Gloo group under NCCL.
    """
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _create_local_process_group(node_rank: int) -> None:
    """Build Detectron2's per-machine group from every process's machine index.

    Every rank must create every group, in the same order; the machine of each rank is
    exchanged rather than assumed, so machines with different process counts work too.
    """
    import torch.distributed as dist
    from detectron2.utils import comm

    if comm._LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError("Detectron2's local process group already exists: the process group "
                           "was initialised twice (torchrun/srun and Detectron2's launch?).")
    nodes: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node_rank)
    for node in sorted(set(nodes)):
        group = dist.new_group([rank for rank, other in enumerate(nodes) if other == node])
        if node == node_rank:
            comm._LOCAL_PROCESS_GROUP = group


def leave_process_group(wait_for_others: bool = True) -> None:
    """Leave the process group cleanly at the end of a worker (no-op when not in one).

    Waits for every rank (unless ``wait_for_others`` is False: a rank that failed must not
    block in a barrier the others never reach), destroys every group, and drops Detectron2's
    reference to its local group, so that no Gloo group (and its threads) is left to be
    destroyed while the interpreter shuts down, which can abort a worker with "terminate called
    without an active exception".
    """
    import gc

    import torch.distributed as dist
    from detectron2.utils import comm

    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait_for_others:
        dist.barrier()
    dist.destroy_process_group()
    comm._LOCAL_PROCESS_GROUP = None
    gc.collect()


def init_process_group_from_environment(launch_env: LaunchEnvironment, device: str,
                                        timeout: Optional[timedelta] = None) -> str:
    """Join the process group of a torchrun/srun job, as Detectron2's spawned workers do.

    Args:
        launch_env: from :func:`detect_launch_environment`; ``external`` must be True.
        device: the run's resolved ``MODEL.DEVICE`` (chooses NCCL or Gloo, and whether to
            select the GPU of the local rank).
        timeout: collective timeout (default: Detectron2's 30 minutes).

    Returns:
        The backend used.
    """
    import torch.distributed as dist
    from detectron2.engine.launch import DEFAULT_TIMEOUT
    from detectron2.utils import comm

    if not launch_env.external:
        raise ValueError("init_process_group_from_environment needs a torchrun or srun process.")
    backend = process_group_backend(device)
    if backend == "nccl":
        count = torch.cuda.device_count()
        if launch_env.local_rank >= count:
            raise RuntimeError(
                f"Local rank {launch_env.local_rank} but only {count} visible GPU(s) on this "
                "machine: start at most one process per GPU, and let every process see all "
                "GPUs of its machine (SLURM: --gpus-per-node, not --gpus-per-task; Detectron2 "
                "puts local rank i on cuda:i).")
        torch.cuda.set_device(launch_env.local_rank)
    # env:// reads these four; SLURM does not set them, torchrun does (same values).
    os.environ.update(MASTER_ADDR=launch_env.master_addr, MASTER_PORT=str(launch_env.master_port),
                      RANK=str(launch_env.rank), WORLD_SIZE=str(launch_env.world_size))
    timeout = timeout or DEFAULT_TIMEOUT
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's agent hosts the store and keeps it across restarts: the keys of the killed
        # attempt (e.g. Gloo's addresses of dead ranks) are still there, and a restarted rank
        # that reads one fails with "connection refused". One key prefix per attempt.
        store = dist.PrefixStore(
            f"resbackbones/attempt_{launch_env.restart_count}/",
            dist.TCPStore(launch_env.master_addr, launch_env.master_port,
                          launch_env.world_size, is_master=False, timeout=timeout))
        dist.init_process_group(backend=backend, store=store, rank=launch_env.rank,
                                world_size=launch_env.world_size, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, init_method="env://", rank=launch_env.rank,
                                world_size=launch_env.world_size, timeout=timeout)
    _create_local_process_group(launch_env.node_rank)
    comm.synchronize()
    logger.info(
        f"Joined the {launch_env.kind} job as rank {launch_env.rank}/{launch_env.world_size} "
        f"(local rank {launch_env.local_rank}/{comm.get_local_size()}, machine "
        f"{launch_env.node_rank}, {backend}, master {launch_env.master_addr}:"
        f"{launch_env.master_port}, restart {launch_env.restart_count}).")
    return backend


def weights_fingerprint(model: torch.nn.Module) -> Tuple[float, float]:
    """(sum, sum of squares) of every parameter in float64: equal on every rank of a correct
    data-parallel run, and cheap to compare across machines. Buffers are left out: Detectron2's
    DDP does not broadcast them, so BN running statistics differ per rank by design (only rank
    0's are saved)."""
    total, squares = 0.0, 0.0
    with torch.no_grad():
        for tensor in model.parameters():
            if tensor.is_floating_point():
                values = tensor.detach().double()
                total += float(values.sum())
                squares += float((values * values).sum())
    return total, squares


def ranks_agree_on_weights(model: torch.nn.Module) -> Dict[int, Tuple[float, float]]:
    """Gather every rank's :func:`weights_fingerprint`; log on every rank whether they agree.

    Returns:
        rank -> fingerprint. Ranks that disagree are named in a WARNING (a desynchronised run:
        e.g. parameters updated outside DDP's gradient averaging).
    """
    from detectron2.utils import comm

    fingerprints = dict(enumerate(comm.all_gather(weights_fingerprint(model))))
    reference = fingerprints[0]
    differing = [rank for rank, value in fingerprints.items()
                 if any(abs(a - b) > 1e-9 * max(1.0, abs(b)) for a, b in zip(value, reference))]
    log = logging.getLogger("detectron2")
    if differing:
        log.warning(f"Weights differ from rank 0 on rank(s) {differing}: {fingerprints}")
    else:
        log.info(f"Weights agree on all {len(fingerprints)} ranks (sum {reference[0]:.9e}, "
                 f"sum of squares {reference[1]:.9e}).")
    return fingerprints


class RankAgreementHook(HookBase):
    """After a completed multi-process run, check on every rank that all ranks hold the same
    weights (:func:`ranks_agree_on_weights`): a cheap end-of-run proof that the machines trained
    one model, logged in each rank's log."""

    def after_train(self) -> None:
        from detectron2.utils import comm

        # Only a completed run: after an exception on one rank a collective would hang.
        if comm.get_world_size() > 1 and self.trainer.iter + 1 >= self.trainer.max_iter:
            ranks_agree_on_weights(self.trainer.model)


class DatasetValidationFailedElsewhere(RuntimeError):
    """Dataset validation failed on rank 0; raised on the other ranks so all stop together."""


def validate_datasets_on_main_process(names: List[str], mode: str, skip_bad: bool,
                                      cleaned_dir: str) -> Dict[str, Any]:
    """Validate datasets once, on rank 0, and apply the outcome on every rank.

    With N processes each one would otherwise open (in "full" mode decode) every image, and an
    I/O error on one rank would leave the others blocked in DDP until its timeout. Rank 0 runs
    :func:`~resbackbones.data.validation.validate_registered_datasets`; its reports (or its error
    text) go to every rank; the others re-register the datasets it cleaned from those reports
    (JSON only, no image read), or raise with rank 0's message. All ranks go on or stop together.

    Returns:
        name -> :class:`~resbackbones.data.validation.ValidationReport`, on every rank.

    Raises:
        DatasetValidationError (rank 0), DatasetValidationFailedElsewhere (other ranks).
    """
    from detectron2.utils import comm

    from resbackbones.data.validation import use_cleaned_dataset, validate_registered_datasets

    if comm.get_world_size() == 1:
        return validate_registered_datasets(names, mode=mode, skip_bad=skip_bad,
                                            cleaned_dir=cleaned_dir)
    reports: Dict[str, Any] = {}
    failure: Optional[BaseException] = None
    outcome: Optional[Dict[str, Any]] = None
    if comm.is_main_process():
        try:
            reports = validate_registered_datasets(names, mode=mode, skip_bad=skip_bad,
                                                   cleaned_dir=cleaned_dir)
            outcome = {"error": None, "reports": reports}
        except Exception as error:  # every failure must reach the other ranks
            failure = error
            outcome = {"error": f"{type(error).__name__}: {error}", "reports": {}}
    outcome = comm.all_gather(outcome)[0]
    if failure is not None:
        raise failure
    if outcome["error"] is not None:
        raise DatasetValidationFailedElsewhere(
            f"Dataset validation failed on rank 0 (see its log); stopping rank "
            f"{comm.get_rank()} too:\n{outcome['error']}")
    if not comm.is_main_process():
        reports = outcome["reports"]
        for name, report in reports.items():
            if not report.ok:  # rank 0 went on, so skip_bad was set: drop the same records
                use_cleaned_dataset(name, report, cleaned_dir)
    return reports


def launch(main_func: Callable[..., Any], num_processes_per_machine: int, *,
           num_machines: int = 1, machine_rank: int = 0, dist_url: Optional[str] = None,
           args: Tuple[Any, ...] = (), backend: str = "gloo",
           timeout: Optional[timedelta] = None) -> Any:
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on this machine.

    What Detectron2's ``launch`` does, on both Detectron2 flavours and with the backend chosen
    from the run's device (:func:`process_group_backend`): v0.6's ``launch`` (unpatched) asserts
    CUDA and main's picks NCCL whenever CUDA exists, even for a CPU run, and has no ``backend``
    argument. Each worker joins the group, builds Detectron2's per-machine group, runs
    ``main_func`` and leaves the group in a ``finally`` (without waiting for the others when it
    failed), so no worker ends by SIGABRT.

    Args:
        main_func: called as ``main_func(*args)`` in every process.
        num_processes_per_machine: Detectron2's ``--num-gpus``.
        num_machines: Detectron2's ``--num-machines``.
        machine_rank: this machine's index.
        dist_url: rank 0's ``tcp://host:port`` for a multi-machine job. None (one machine): the
            parent process hosts the rendezvous store on a port the system chooses (port 0), so
            no port is probed, released and hoped to stay free.
        args: arguments of ``main_func``.
        backend: "gloo" or "nccl".
        timeout: collective timeout (default: Detectron2's 30 minutes).

    Returns:
        ``main_func``'s result in a one-process run, else None.
    """
    import torch.multiprocessing as mp
    from detectron2.engine.launch import DEFAULT_TIMEOUT

    world_size = num_processes_per_machine * num_machines
    if world_size == 1:
        return main_func(*args)
    timeout = timeout or DEFAULT_TIMEOUT
    store = None
    if dist_url is None or dist_url == "auto":
        if num_machines != 1:
            raise ValueError(f"--num-machines {num_machines} needs --dist-url tcp://HOST:PORT of "
                             "machine 0 (every machine must give the same one).")
        import torch.distributed as dist

        store = dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, timeout=timeout,
                              wait_for_workers=False)
        rendezvous = ("store", "127.0.0.1", store.port)
    else:
        rendezvous = ("url", dist_url, 0)
    try:
        mp.start_processes(
            _launched_worker, nprocs=num_processes_per_machine, daemon=False,
            args=(main_func, args, world_size, num_processes_per_machine, machine_rank,
                  backend, rendezvous, timeout))
    finally:
        del store
    return None


def _launched_worker(local_rank: int, main_func: Callable[..., Any], args: Tuple[Any, ...],
                     world_size: int, per_machine: int, machine_rank: int, backend: str,
                     rendezvous: Tuple[str, str, int], timeout: timedelta) -> None:
    import torch.distributed as dist
    from detectron2.utils import comm

    rank = machine_rank * per_machine + local_rank
    if backend == "nccl":
        if per_machine > torch.cuda.device_count():
            raise RuntimeError(f"--num-gpus {per_machine} but only {torch.cuda.device_count()} "
                               "visible GPU(s) on this machine.")
        torch.cuda.set_device(local_rank)
    kind, address, port = rendezvous
    if kind == "store":
        store = dist.TCPStore(address, port, world_size, is_master=False, timeout=timeout)
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size,
                                timeout=timeout)
    else:
        dist.init_process_group(backend=backend, init_method=address, rank=rank,
                                world_size=world_size, timeout=timeout)
    _create_local_process_group(machine_rank)
    comm.synchronize()
    finished = False
    try:
        main_func(*args)
        finished = True
    finally:
        leave_process_group(wait_for_others=finished)
