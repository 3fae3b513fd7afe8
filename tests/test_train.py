"""End to end: tools/train_net.py's main() trains, evaluates, resumes and runs on 2 Gloo processes.

One small synthetic set is shared by all tests; the Mask R-CNN run is shared by the tests that
inspect its outputs. Thresholds are far below the measured values (see the report in each test)
but far above what an untrained model or a broken pipeline gives (AP 0).
"""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.engine import HookBase
from resbackbones.data import SyntheticSpec, generate_synthetic_coco, synthetic_paths
from resbackbones.engine import CPUAutocastTrainer, Trainer
from resbackbones.engine.distributed import launch
from resbackbones.engine.launch import build_argument_parser, main, setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml")
SPEC = SyntheticSpec(num_train=32, num_val=8, seed=1, height=128, width=160)
# A short from-scratch schedule on 128x160 images.
SHORT = ["SOLVER.MAX_ITER", "100", "SOLVER.BASE_LR", "0.02", "SOLVER.WARMUP_ITERS", "20",
         "SOLVER.STEPS", "(80,)", "SOLVER.CHECKPOINT_PERIOD", "50",
         "SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
         "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "5.0",
         "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
         "DATASETS.TRAIN", "('e2e_train',)", "DATASETS.TEST", "('e2e_val',)", "SEED", "1"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_flags(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("e2e_data"))
    generate_synthetic_coco(root, SPEC)
    flags = []
    for split in ("train", "val"):
        json_file, image_root = synthetic_paths(root, split)
        flags += ["--dataset", f"e2e_{split}={json_file}:{image_root}"]
    return flags


def _args(data_flags, output_dir, *extra, flags=()):
    return build_argument_parser().parse_args(
        ["--config-file", QUICK, *flags, *data_flags, *SHORT, "OUTPUT_DIR", str(output_dir),
         *extra])


@pytest.fixture(scope="module")
def mask_rcnn_run(data_flags, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("mask_rcnn")
    results = main(_args(data_flags, output_dir))
    return output_dir, results


def test_mask_rcnn_learns(mask_rcnn_run):
    _, results = mask_rcnn_run
    # Measured after these 100 iterations (an untrained model gives 0), two runs on 2 shared
    # cores: an earlier session's box AP 0.99 / AP50 4.95, mask AP 1.66 / AP50 6.68; and
    # 2026-12-04, 2-core AMD EPYC VM at load ~10: box AP 0.67 / AP50 1.53, mask AP 1.04 / AP50
    # 3.02. Same seed, yet AP50 varied 3x between the runs, so the bounds sit below the lower run.
    assert results["bbox"]["AP"] > 0.3 and results["bbox"]["AP50"] > 0.75
    assert results["segm"]["AP"] > 0.4 and results["segm"]["AP50"] > 1.2


def test_run_writes_metrics_events_checkpoints_plots_and_drawings(mask_rcnn_run):
    output_dir, results = mask_rcnn_run
    for name in ("config.yaml", "metrics.json", "model_final.pth", "model_0000049.pth",
                 "metrics.png", "eval_results.json", "last_checkpoint"):
        assert (output_dir / name).is_file(), name
    assert glob.glob(str(output_dir / "events.out.tfevents.*"))
    drawings = sorted((output_dir / "visualizations").glob("*.png"))
    assert len(drawings) == 4
    with open(output_dir / "eval_results.json") as f:
        assert json.load(f)["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"])
    records = [json.loads(line) for line in open(output_dir / "metrics.json")]
    assert max(r["iteration"] for r in records if "total_loss" in r) == 99
    assert any("segm/AP" in r for r in records) and any("total_loss" in r for r in records)
    # total_loss rises early (box/class losses start once the RPN finds objects); the RPN and
    # mask losses fall from the start (measured 0.42 -> 0.09 and 0.63 -> 0.50 in 100 iterations).
    for key in ("loss_rpn_cls", "loss_mask"):
        values = [r[key] for r in records if key in r]
        assert values[-1] < values[0], key


def test_eval_only_reproduces_ap(mask_rcnn_run, data_flags, tmp_path):
    output_dir, results = mask_rcnn_run
    again = main(_args(data_flags, tmp_path, "MODEL.WEIGHTS", str(output_dir / "model_final.pth"),
                       flags=["--eval-only"]))
    for task in ("bbox", "segm"):
        assert again[task]["AP"] == pytest.approx(results[task]["AP"], abs=1e-6)


def test_inference_speedups_keep_the_ap_of_a_trained_model(mask_rcnn_run, data_flags, tmp_path):
    """On trained weights (no near-tied random scores) the speed-ups leave COCO AP unchanged."""
    output_dir, results = mask_rcnn_run
    plain = main(_args(data_flags, tmp_path, "MODEL.WEIGHTS", str(output_dir / "model_final.pth"),
                       "MODEL.META_ARCHITECTURE", "GeneralizedRCNN",
                       "MODEL.RESBACKBONE.WINOGRAD", "False",
                       "MODEL.RESBACKBONE.CHANNELS_LAST", "off",
                       "MODEL.RESBACKBONE.FOLD_BN_FOR_INFERENCE", "False",
                       "MODEL.RESBACKBONE.PARALLEL_ROI_ALIGN", "False", flags=["--eval-only"]))
    for task in ("bbox", "segm"):
        for metric in ("AP", "AP50"):
            assert plain[task][metric] == pytest.approx(results[task][metric], abs=0.2), (
                task, metric)


def test_bf16_inference_keeps_the_ap_of_a_trained_model(mask_rcnn_run, data_flags, tmp_path):
    """INFERENCE_AMP bf16 (backbone, FPN and heads under autocast): COCO box and mask AP within
    0.5 of float32 on trained weights (issue 18's tolerance)."""
    output_dir, results = mask_rcnn_run
    bf16 = main(_args(data_flags, tmp_path, "MODEL.WEIGHTS", str(output_dir / "model_final.pth"),
                      "MODEL.RESBACKBONE.INFERENCE_AMP", "bf16", flags=["--eval-only"]))
    for task in ("bbox", "segm"):
        assert bf16[task]["AP"] == pytest.approx(results[task]["AP"], abs=0.5), task


def test_plot_metrics_tool(mask_rcnn_run, tmp_path):
    output_dir, _ = mask_rcnn_run
    out = tmp_path / "curves.png"
    subprocess.run([sys.executable, os.path.join(REPO, "tools/plot_metrics.py"), str(output_dir),
                    "--out", str(out)], check=True, capture_output=True)
    assert out.stat().st_size > 10_000


class _Interrupt(HookBase):
    """Simulates a killed job: raises once iteration ``at`` has run."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt("simulated interruption")


def test_faster_rcnn_resume_after_interruption_then_learns(data_flags, tmp_path):
    faster = ["MODEL.MASK_ON", "False"]
    args = _args(data_flags, tmp_path, *faster)
    trainer = Trainer(setup_cfg(args))
    trainer.register_hooks([_Interrupt(at=60)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000049.pth"

    resumed = build_argument_parser().parse_args(["--resume", *vars_to_argv(args)])
    trainer = Trainer(setup_cfg(resumed))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 50  # checkpoint saved after iteration 49
    results = trainer.train()
    assert (tmp_path / "model_final.pth").exists()
    # Measured 2026-12-04 on a 2-core AMD EPYC VM at load ~10 (this test's run, interrupted at
    # 60 and resumed from iteration 50): box AP 2.15 / AP50 5.79; an untrained model gives 0.
    # Bounds at about a third of that: the mask test's two runs differed 3x in AP50.
    assert results["bbox"]["AP"] > 0.5 and results["bbox"]["AP50"] > 1.5
    assert "segm" not in results


def vars_to_argv(args):
    argv = ["--config-file", args.config_file]
    for spec in args.dataset:
        argv += ["--dataset", spec]
    return argv + list(args.opts)


def test_cpu_amp_uses_bfloat16_autocast(data_flags, tmp_path):
    args = _args(data_flags, tmp_path, "SOLVER.AMP.ENABLED", "True", "SOLVER.MAX_ITER", "2",
                 "DATASETS.TEST", "()")
    trainer = Trainer(setup_cfg(args))
    assert isinstance(trainer._trainer, CPUAutocastTrainer)
    trainer.resume_or_load(resume=False)
    trainer.train()
    records = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in records if "total_loss" in r)


def _record_images_worker(args, record_dir):
    """Runs in each launched process: train a few steps, write the images each step used."""
    from detectron2.utils import comm

    trainer = Trainer(setup_cfg(args))
    seen = []
    loader = trainer._trainer.data_loader

    def recording():
        for batch in loader:
            seen.append([os.path.basename(d["file_name"]) for d in batch])
            yield batch

    trainer._trainer._data_loader_iter = iter(recording())
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(os.path.join(record_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump(seen[:trainer.max_iter], f)


def test_two_gloo_processes_see_the_same_images_as_one(data_flags, tmp_path):
    # MODEL.DEVICE cpu: several processes without CUDA must be asked for explicitly.
    opts = ["MODEL.MASK_ON", "False", "MODEL.RESBACKBONE.NORM", "naiveSyncBN",
            "SOLVER.MAX_ITER", "4", "DATASETS.TEST", "()", "SOLVER.IMS_PER_BATCH", "2",
            "MODEL.DEVICE", "cpu"]
    single, double = tmp_path / "single", tmp_path / "double"
    single.mkdir()
    double.mkdir()
    launch(_record_images_worker, 1, args=(_args(data_flags, single / "out", *opts), str(single)))
    launch(_record_images_worker, 2,
           args=(_args(data_flags, double / "out", *opts), str(double)))
    one = json.load(open(single / "rank0.json"))
    ranks = [json.load(open(double / f"rank{r}.json")) for r in (0, 1)]
    assert (double / "out" / "model_final.pth").exists()
    assert all(len(batch) == 1 for rank in ranks for batch in rank)  # 2 images split over 2
    assert [sorted(batch) for batch in one] == [sorted(a + b) for a, b in zip(*ranks)]


def test_quickstart_trains_once_then_reuses_the_run(tmp_path, capsys):
    from resbackbones.engine.quickstart import QuickstartOptions, run_quickstart

    options = QuickstartOptions(
        data=str(tmp_path / "data"), output=str(tmp_path / "out"),
        spec=SyntheticSpec(num_train=4, num_val=2, seed=0, height=96, width=128),
        opts=("SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0",
              "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
              "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128"))
    first = run_quickstart(options)
    out = capsys.readouterr().out
    assert "trained in" in out and "box AP" in out and "mask AP" in out
    for name in ("model_final.pth", "config.yaml", "metrics.png", "eval_results.json"):
        assert (tmp_path / "out" / name).is_file(), name
    mtime = (tmp_path / "out" / "model_final.pth").stat().st_mtime
    second = run_quickstart(options)
    assert "finished run found" in capsys.readouterr().out
    assert json.dumps(second, sort_keys=True) == json.dumps(first, sort_keys=True)  # NaN-safe
    assert (tmp_path / "out" / "model_final.pth").stat().st_mtime == mtime
    changed = QuickstartOptions(**{**options.__dict__,
                                   "opts": options.opts + ("SOLVER.BASE_LR", "0.005")})
    run_quickstart(changed)
    assert "trained in" in capsys.readouterr().out
