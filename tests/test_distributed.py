"""Scale-out: torchrun, SLURM and Detectron2's multi-machine flags, and elastic restarts.

The multi-process tests run real Gloo jobs on 127.0.0.1 (one or two "machines" on this host),
each a few iterations of Mask R-CNN R18-FPN (masks off) on a tiny synthetic set. World size 2
everywhere, the same seed and data: every launcher must train the very same model as
``--num-gpus 2`` (identical final weights and logged losses). Each prints its wall time, and
every process must end cleanly (status 0, no "terminate called"). How the jobs are run and
where their ports come from: tests/distributed_jobs.py (also behind `make stress`).
"""
import json
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from distributed_jobs import (
    SLURM_JOIN,
    TIMEOUT_S,
    clean_environment,
    run_together,
    run_with_fresh_port,
    slurm_task_environments,
)

from resbackbones.engine.distributed import (
    DEFAULT_MASTER_PORT,
    LaunchEnvironment,
    check_launch_arguments,
    detect_launch_environment,
    expand_slurm_nodelist,
    process_group_backend,
)

REPO = Path(__file__).resolve().parents[1]
QUICK = "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml"
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
# 4 iterations, checkpoints after iterations 2 and 4 (files model_0000001/3.pth, model_final).
RUN = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
       "DATASETS.TRAIN", "('dist_train',)", "DATASETS.TEST", "()", "MODEL.MASK_ON", "False",
       "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "2",
       "MODEL.DEVICE", "cpu", "SEED", "7"]


# --- SLURM host lists and launch environments (no processes) ---------------------------------

@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
    ("a[1-2],b3", ["a1", "a2", "b3"]),
    ("node17", ["node17"]),
    ("n[008-010]", ["n008", "n009", "n010"]),
    ("rack[1-2]-gpu[1,3]", ["rack1-gpu1", "rack1-gpu3", "rack2-gpu1", "rack2-gpu3"]),
    ("x[9-10],y", ["x9", "x10", "y"]),
])
def test_slurm_nodelist_expands_like_scontrol(nodelist, hosts):
    assert expand_slurm_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist, message", [
    ("gpu[01-04", "'[' without ']'"), ("gpu01]", "']' without '['"),
    ("gpu[4-1]", "runs backwards"), ("gpu[a-b]", "not a number"),
])
def test_malformed_slurm_nodelist_is_refused_with_the_list(nodelist, message):
    with pytest.raises(ValueError) as error:
        expand_slurm_nodelist(nodelist)
    assert message in str(error.value) and repr(nodelist) in str(error.value)


SRUN_RANK_5_OF_8 = {
    "SLURM_PROCID": "5", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1", "SLURM_TASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[01-04,07]",
    "SLURM_JOB_ID": "123456",
}


def test_srun_task_maps_to_rank_local_rank_world_size_and_master():
    env = detect_launch_environment(SRUN_RANK_5_OF_8)
    assert env == LaunchEnvironment(
        kind="slurm", rank=5, local_rank=1, world_size=8, local_world_size=4, node_rank=1,
        master_addr="gpu01", master_port=DEFAULT_MASTER_PORT + 456, restart_count=0)


def test_srun_step_variables_and_exported_master_take_precedence():
    env = detect_launch_environment({
        **SRUN_RANK_5_OF_8, "SLURM_STEP_NUM_TASKS": "7", "SLURM_STEP_TASKS_PER_NODE": "2(x3),1",
        "SLURM_NODEID": "3", "SLURM_LOCALID": "0", "SLURM_STEP_NODELIST": "a[1-2],b3,c[07-08]",
        "MASTER_PORT": "12345", "SLURM_RESTART_COUNT": "2"})
    assert (env.world_size, env.local_world_size, env.master_addr, env.master_port,
            env.restart_count) == (7, 1, "a1", 12345, 2)
    assert detect_launch_environment({**SRUN_RANK_5_OF_8, "MASTER_ADDR": "10.0.0.9"}
                                     ).master_addr == "10.0.0.9"


def test_batch_script_and_single_task_steps_keep_detectron2s_launcher():
    batch = {k: v for k, v in SRUN_RANK_5_OF_8.items() if k != "SLURM_STEP_ID"}
    assert detect_launch_environment({**batch, "SLURM_PROCID": "0"}).kind == "none"
    assert detect_launch_environment({**SRUN_RANK_5_OF_8, "SLURM_PROCID": "0",
                                      "SLURM_NTASKS": "1"}).kind == "none"
    assert detect_launch_environment({}).kind == "none"


def test_torchrun_variables_win_over_slurm_and_need_a_master():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "GROUP_RANK": "1", "MASTER_ADDR": "node-a", "MASTER_PORT": "29400",
                "TORCHELASTIC_RESTART_COUNT": "1"}
    env = detect_launch_environment({**SRUN_RANK_5_OF_8, **torchrun})
    assert env == LaunchEnvironment(kind="torchrun", rank=3, local_rank=1, world_size=4,
                                    local_world_size=2, node_rank=1, master_addr="node-a",
                                    master_port=29400, restart_count=1)
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        detect_launch_environment({k: v for k, v in torchrun.items() if k != "MASTER_ADDR"})
    with pytest.raises(ValueError, match="rank 5 of 4"):
        detect_launch_environment({**torchrun, "RANK": "5"})


def test_detectron2_launcher_flags_under_torchrun_are_refused():
    env = LaunchEnvironment(kind="torchrun", rank=0, world_size=2, local_world_size=2)
    with pytest.raises(ValueError) as error:
        check_launch_arguments(env, num_gpus=8, num_machines=1, machine_rank=0)
    assert "--num-gpus 8" in str(error.value) and "torchrun --nproc-per-node" in str(error.value)
    check_launch_arguments(env, num_gpus=1, num_machines=1, machine_rank=0)  # fine
    check_launch_arguments(LaunchEnvironment(), num_gpus=8, num_machines=2, machine_rank=1)


def test_train_net_refuses_num_gpus_inside_torchrun_before_starting_anything(monkeypatch):
    from resbackbones.engine import launch as launch_module

    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                        "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(launch_module, "launch", lambda *a, **k: pytest.fail("spawned"))
    monkeypatch.setattr(launch_module, "init_process_group_from_environment",
                        lambda *a, **k: pytest.fail("joined a process group"))
    with pytest.raises(ValueError, match="--num-gpus 2 given, but this process was started by "
                                         "torchrun"):
        launch_module.run(["--config-file", str(REPO / QUICK), "--num-gpus", "2"])


def test_one_machine_leaves_the_port_to_the_system_and_several_keep_the_url(monkeypatch):
    """--num-gpus 2 with Detectron2's default --dist-url (one fixed port per user, which a stray
    worker of an earlier run can still hold) reaches launch() as None: the parent then hosts the
    rendezvous on a port the system picks. Several machines keep the URL they were all given."""
    from resbackbones.engine import launch as launch_module

    calls = []
    monkeypatch.setattr(launch_module, "launch", lambda *args, **kwargs: calls.append(kwargs))
    common = ["--config-file", str(REPO / QUICK), "MODEL.DEVICE", "cpu"]
    launch_module.run(["--num-gpus", "2", *common])
    launch_module.run(["--num-gpus", "2", "--dist-url", "auto", *common])
    url = "tcp://10.1.2.3:40000"
    launch_module.run(["--num-machines", "2", "--machine-rank", "1", "--dist-url", url, *common])
    assert [call["dist_url"] for call in calls] == [None, None, url]


def test_backend_follows_the_runs_device():
    assert process_group_backend("cuda") == process_group_backend("cuda:1") == "nccl"
    assert process_group_backend("cpu") == "gloo"


# --- real multi-process jobs ------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_flags(tmp_path_factory):
    from resbackbones.data import SyntheticSpec, generate_synthetic_coco, synthetic_paths

    root = str(tmp_path_factory.mktemp("dist_data"))
    generate_synthetic_coco(root, SyntheticSpec(num_train=8, num_val=2, seed=3, height=96,
                                                width=128))
    json_file, image_root = synthetic_paths(root, "train")
    return ["--dataset", f"dist_train={json_file}:{image_root}"]


def _train_net(data_flags, output_dir, *flags, extra=()):
    return ["tools/train_net.py", *flags, "--config-file", QUICK, *data_flags, *RUN,
            *extra, "OUTPUT_DIR", str(output_dir)]


def _run_all(commands, label):
    """Start the commands together (the "machines"), wait for all; print the wall time; each
    must end cleanly (exit status 0, no "terminate called")."""
    result = run_together(commands)
    print(f"{label}: {result.seconds:.1f} s wall")
    assert not result.problems(), result.report()
    return result.outputs


def _final_weights(output_dir) -> dict:
    return torch.load(Path(output_dir) / "model_final.pth", map_location="cpu",
                      weights_only=False)["model"]


def _logged_losses(output_dir) -> list:
    records = [json.loads(line) for line in open(Path(output_dir) / "metrics.json")]
    return [(r["iteration"], r["total_loss"]) for r in records if "total_loss" in r]


def _assert_same_training(output_dir, reference_dir):
    losses, reference_losses = _logged_losses(output_dir), _logged_losses(reference_dir)
    assert [it for it, _ in losses] == [it for it, _ in reference_losses]
    assert [v for _, v in losses] == pytest.approx([v for _, v in reference_losses], rel=1e-5)
    weights, reference = _final_weights(output_dir), _final_weights(reference_dir)
    assert weights.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)


CHECKPOINTS = {"model_0000001.pth", "model_0000003.pth", "model_final.pth"}


def _assert_one_set_of_checkpoints(rank0_dir, rank1_dir):
    """Rank 0 writes every checkpoint; rank 1 (its own OUTPUT_DIR: machines need not share a
    file system) writes only its log, and both logs say the ranks ended with equal weights."""
    assert {p.name for p in Path(rank0_dir).glob("*.pth")} == CHECKPOINTS
    assert sorted(p.name for p in Path(rank1_dir).iterdir()) == ["log.txt.rank1"]
    for log in (Path(rank0_dir) / "log.txt", Path(rank1_dir) / "log.txt.rank1"):
        assert "Weights agree on all 2 ranks" in log.read_text(), log


@pytest.fixture(scope="module")
def num_gpus_2_run(data_flags, tmp_path_factory):
    """The reference: Detectron2's own launcher, --num-gpus 2, on this machine."""
    output_dir = tmp_path_factory.mktemp("num_gpus_2")
    _run_all([[sys.executable, *_train_net(data_flags, output_dir, "--num-gpus", "2")]],
             "--num-gpus 2")
    return output_dir


@pytest.mark.slow
def test_torchrun_standalone_equals_num_gpus_2(data_flags, num_gpus_2_run, tmp_path):
    _run_all([[TORCHRUN, "--standalone", "--nproc-per-node", "2",
               *_train_net(data_flags, tmp_path)]], "torchrun --standalone, 2 procs")
    _assert_same_training(tmp_path, num_gpus_2_run)
    log = (tmp_path / "log.txt").read_text()
    assert "kind='torchrun', rank=0" in log and "local_world_size=2" in log


@pytest.mark.slow
def test_two_machines_through_detectron2_flags(data_flags, num_gpus_2_run, tmp_path):
    # Both machines need the URL before either starts, and machine 0 binds its port (as on a
    # cluster): a port the system just handed out, retried on a collision (distributed_jobs).
    def machines(port):
        return [[sys.executable, *_train_net(
            data_flags, tmp_path / f"machine{rank}", "--num-machines", "2", "--machine-rank",
            str(rank), "--dist-url", f"tcp://127.0.0.1:{port}")] for rank in (0, 1)], None

    result = run_with_fresh_port(machines)
    print(f"2 machines x 1 process, Detectron2 flags: {result.seconds:.1f} s wall")
    assert not result.problems(), result.report()
    _assert_one_set_of_checkpoints(tmp_path / "machine0", tmp_path / "machine1")
    _assert_same_training(tmp_path / "machine0", num_gpus_2_run)


@pytest.fixture
def rendezvous_store():
    """A TCPStore this test process hosts on a port the system picks (port 0), kept until the
    test ends: torchrun's c10d rendezvous on it needs no port chosen in advance. Both agents are
    its clients (``is_host=0``); rank 0's agent then hosts the workers' store on port 0 too."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=TIMEOUT_S))
    yield f"127.0.0.1:{store.port}"
    del store


@pytest.mark.slow
def test_two_machines_through_torchrun_c10d_rendezvous(data_flags, num_gpus_2_run, tmp_path,
                                                        rendezvous_store):
    machines = [[TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", rendezvous_store, "--rdzv-id", "resbackbones-test",
                 "--rdzv-conf", "is_host=0", "--local-addr", "127.0.0.1",
                 *_train_net(data_flags, tmp_path / f"node{node}")] for node in (0, 1)]
    _run_all(machines, "torchrun --nnodes 2 --nproc-per-node 1, c10d")
    # The rendezvous, not the command line, decides which node holds rank 0.
    ranked = sorted((tmp_path / f"node{node}" for node in (0, 1)),
                    key=lambda d: not (d / "log.txt").exists())
    _assert_one_set_of_checkpoints(*ranked)
    _assert_same_training(ranked[0], num_gpus_2_run)
    assert "node_rank=1" in (ranked[1] / "log.txt.rank1").read_text()


@pytest.mark.slow
def test_elastic_restart_after_sigkill_resumes_from_the_last_checkpoint(data_flags, tmp_path):
    import psutil

    command = [TORCHRUN, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1",
               "--monitor-interval", "0.2",
               *_train_net(data_flags, tmp_path, extra=[
                   "SOLVER.MAX_ITER", "9", "SOLVER.CHECKPOINT_PERIOD", "3"])]
    start = time.perf_counter()
    # Output to a file, not a pipe: this test reads nothing until the workers have written a
    # checkpoint, and two workers' start-up logs can fill a pipe's 64 KiB and block them.
    output_path = tmp_path / "torchrun.out"
    output_file = open(output_path, "w")
    agent = subprocess.Popen(command, cwd=REPO, env=clean_environment(), text=True,
                             stdout=output_file, stderr=subprocess.STDOUT)
    workers = []
    try:
        deadline = time.time() + TIMEOUT_S
        while not (tmp_path / "last_checkpoint").exists():  # the first complete checkpoint
            assert agent.poll() is None, output_path.read_text()[-4000:]
            assert time.time() < deadline, output_path.read_text()[-4000:]
            time.sleep(0.02)
        last_at_kill = (tmp_path / "last_checkpoint").read_text()
        workers = [p for p in psutil.Process(agent.pid).children()
                   if "train_net.py" in " ".join(p.cmdline())]
        assert len(workers) == 2
        workers[-1].send_signal(signal.SIGKILL)
        agent.wait(timeout=TIMEOUT_S)
    finally:
        if agent.poll() is None:  # SIGTERM first: torchrun then stops its workers itself
            agent.terminate()
            try:
                agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                agent.kill()
        for worker in workers:
            if worker.is_running():
                worker.kill()
        output_file.close()
    print(f"torchrun --max-restarts 1, one worker SIGKILLed: "
          f"{time.perf_counter() - start:.1f} s wall")
    output = output_path.read_text()
    assert agent.returncode == 0, output[-4000:]
    log = (tmp_path / "log.txt").read_text()
    assert "Restart 1 of this job: resuming from the last checkpoint" in log
    # At most one checkpoint period lost: it resumes from the newest checkpoint at the kill (or
    # the next one, if the kill came while it was being written).
    resumed_from = int(last_at_kill[len("model_"):-len(".pth")])
    starts = [int(line.rsplit(" ", 1)[1]) for line in log.splitlines()
              if "Starting training from iteration" in line]
    assert starts[0] == 0 and starts[-1] in (resumed_from + 1, resumed_from + 4), starts
    assert (tmp_path / "model_final.pth").exists()
    iterations = [it for it, _ in _logged_losses(tmp_path)]
    assert iterations[-1] == 8


@pytest.mark.slow
def test_two_srun_tasks_on_two_nodes_join_one_process_group():
    """What srun gives 2 tasks on 2 nodes (simulated variables, a compressed node list whose
    first host is this machine): one Gloo group of 2, one process per machine, and both tasks
    end cleanly (they leave the group in finally; a bare destroy_process_group() once left
    Detectron2's local Gloo group to interpreter shutdown, which aborted a task with SIGABRT)."""
    command = [sys.executable, "-c", SLURM_JOIN]
    result = run_with_fresh_port(lambda port: ([command, command],
                                               slurm_task_environments(port)))
    print(f"2 simulated srun tasks joining: {result.seconds:.1f} s wall")
    assert not result.problems(), result.report()
    # One report per task (its output also holds the other lines the task printed).
    records = [[json.loads(line) for line in out.splitlines() if line.startswith('{"kind"')]
               for out in result.outputs]
    assert records == [[{"kind": "slurm", "backend": "gloo", "rank": rank, "world": 2,
                         "local_rank": 0, "local_size": 1, "gathered": [0, 1]}]
                       for rank in (0, 1)]
