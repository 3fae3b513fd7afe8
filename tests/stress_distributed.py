"""`make stress`: run the multi-process jobs many times in a row; every process must end cleanly.

Why: a worker that aborts at exit ("terminate called without an active exception", SIGABRT) or
a port taken by a stray worker shows up in one run out of many, not in the one run a test makes.
This runs, ``--repeats`` times each (default 20):

- ``slurm``: the SLURM join of tests/test_distributed.py (2 simulated srun tasks on 2 "nodes"
  join one Gloo group, gather, leave it);
- ``launcher``: ``tools/train_net.py --num-gpus 2`` (resbackbones' launch, 2 Gloo processes)
  training 2 iterations of the quick R18 config on a tiny synthetic set, on the CPU.

A run is clean when every process exits with status 0 and prints no "terminate called". It
prints one line per run and a summary table, keeps the output of failed runs (``--keep``) and
exits with 1 when any run was not clean. Not part of `make test` (minutes per repeat on a
shared 2-core machine).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

from distributed_jobs import (
    REPO,
    SLURM_JOIN,
    JobResult,
    run_together,
    run_with_fresh_port,
    slurm_task_environments,
)

QUICK = "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml"
TINY_TRAINING = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
                 "DATASETS.TRAIN", "('stress_train',)", "DATASETS.TEST", "()",
                 "MODEL.MASK_ON", "False", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                 "SOLVER.CHECKPOINT_PERIOD", "1000", "MODEL.DEVICE", "cpu", "SEED", "7"]
JOBS = ("slurm", "launcher")


def slurm_join() -> JobResult:
    """One SLURM join: 2 tasks, MASTER_PORT retried on a collision (see distributed_jobs)."""
    command = [sys.executable, "-c", SLURM_JOIN]
    return run_with_fresh_port(lambda port: ([command, command], slurm_task_environments(port)))


def launcher_run(dataset_flag: List[str], output_dir: Path) -> JobResult:
    """One ``--num-gpus 2`` training of 2 iterations; it must also write its final model."""
    result = run_together([[sys.executable, "tools/train_net.py", "--num-gpus", "2",
                            "--config-file", QUICK, *dataset_flag, *TINY_TRAINING,
                            "OUTPUT_DIR", str(output_dir)]])
    if not result.problems() and not (output_dir / "model_final.pth").is_file():
        result.returncodes[0] = -1000  # ended with 0 but trained nothing: not a clean run
        result.outputs[0] += "\n[stress] exit status 0 but no model_final.pth\n"
    return result


def summary_table(results: Dict[str, List[JobResult]]) -> str:
    """Runs, clean runs and wall times per job, as a Markdown table."""
    lines = ["| job | runs | clean | not clean | median s | max s |",
             "|---|---|---|---|---|---|"]
    for job, runs in results.items():
        if not runs:
            continue
        seconds = [run.seconds for run in runs]
        clean = sum(1 for run in runs if not run.problems())
        lines.append(f"| {job} | {len(runs)} | {clean} | {len(runs) - clean} | "
                     f"{statistics.median(seconds):.1f} | {max(seconds):.1f} |")
    return "\n".join(lines)


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="runs of each job")
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    parser.add_argument("--keep", default="output/stress", help="folder for failed runs' output")
    args = parser.parse_args(argv)

    from resbackbones.data import SyntheticSpec, generate_synthetic_coco, synthetic_paths

    work = Path(tempfile.mkdtemp(prefix="resbackbones-stress-"))
    generate_synthetic_coco(str(work / "data"), SyntheticSpec(num_train=8, num_val=2, seed=3,
                                                              height=96, width=128))
    json_file, image_root = synthetic_paths(str(work / "data"), "train")
    dataset_flag = ["--dataset", f"stress_train={json_file}:{image_root}"]
    results: Dict[str, List[JobResult]] = {job: [] for job in args.jobs}
    for repeat in range(1, args.repeats + 1):
        for job in args.jobs:
            result = (slurm_join() if job == "slurm"
                      else launcher_run(dataset_flag, work / f"run{repeat}"))
            results[job].append(result)
            problems = result.problems()
            print(f"[stress] {job} {repeat}/{args.repeats}: exit {result.returncodes}, "
                  f"{result.seconds:.1f} s, {'; '.join(problems) or 'clean'}", flush=True)
            if problems:
                keep = REPO / args.keep / f"{job}_{repeat}.txt"
                keep.parent.mkdir(parents=True, exist_ok=True)
                keep.write_text(result.report(tail=100_000))
                print(f"[stress]   output kept in {keep}", flush=True)
    print("\n" + summary_table(results))
    return 1 if any(run.problems() for runs in results.values() for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
