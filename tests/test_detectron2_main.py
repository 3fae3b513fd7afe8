"""The library on stock upstream Detectron2 main, with none of the installer's rewrites.

Every test runs the project's command lines in a subprocess with the pinned main snapshot first
on PYTHONPATH (tests/detectron2_main.py); this process has v0.6 (the installer's build), which
the cross-flavour tests use as the other side. Tiny sizes: a ResNet-18 Mask R-CNN on 96x128
synthetic shapes, a few iterations. What is checked is that each path runs on main and gives the
same results as on v0.6, not accuracy.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
import torch

from detectron2_main import REPO, main_environment, require_detectron2_main
from resbackbones.data import SyntheticSpec, generate_synthetic_coco, synthetic_paths
from resbackbones.deploy.onnx_runner import META_FILE

pytestmark = pytest.mark.slow

QUICK = str(REPO / "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml")
SPEC = SyntheticSpec(num_train=8, num_val=3, seed=3, height=96, width=128)
TINY = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "2",
        "DATASETS.TRAIN", "('tiny_train',)", "DATASETS.TEST", "('tiny_val',)", "SEED", "5"]
TIMEOUT = 420


@pytest.fixture(scope="module")
def main_root() -> Path:
    return require_detectron2_main()


@pytest.fixture(scope="module")
def data_flags(tmp_path_factory) -> List[str]:
    root = str(tmp_path_factory.mktemp("tiny_shapes"))
    generate_synthetic_coco(root, SPEC)
    flags: List[str] = []
    for split in ("train", "val"):
        json_file, image_root = synthetic_paths(root, split)
        flags += ["--dataset", f"tiny_{split}={json_file}:{image_root}"]
    return flags


def _run(argv: Sequence[str], log: Path, main_root: Path = None, timeout: float = TIMEOUT,
         cwd: Path = REPO) -> str:
    """Run ``argv`` (main first on PYTHONPATH when ``main_root``), output to ``log`` (never a
    pipe: two workers' start-up logs can fill one and block them); returns the log text and
    fails the test with its tail when the exit code is not 0."""
    env = main_environment(main_root) if main_root else dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    with open(log, "w") as out:
        code = subprocess.run(list(argv), env=env, cwd=str(cwd), stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout).returncode
    text = log.read_text()
    assert code == 0, f"{' '.join(argv)} exited {code}:\n{text[-4000:]}"
    return text


def _train_net(data_flags: Sequence[str], output: Path, *extra: str, flags: Sequence[str] = ()
               ) -> List[str]:
    return [sys.executable, str(REPO / "tools/train_net.py"), "--config-file", QUICK, *flags,
            *data_flags, *TINY, "OUTPUT_DIR", str(output), *extra]


def _results(output: Path) -> Dict:
    return json.loads((output / "eval_results.json").read_text())


def _flavour_line(log: str) -> str:
    lines = [line for line in log.splitlines() if "Detectron2 " in line and " flavour" in line]
    assert lines, "the run does not log its Detectron2 flavour"
    return lines[0]


@pytest.fixture(scope="module")
def main_run(main_root, data_flags, tmp_path_factory) -> Path:
    """Mask R-CNN trained 4 iterations on main by tools/train_net.py, evaluated at the end."""
    output = tmp_path_factory.mktemp("main_run")
    log = _run(_train_net(data_flags, output, "SOLVER.MAX_ITER", "4"), output / "run.log",
               main_root)
    assert "main flavour" in _flavour_line(log)
    return output


def test_train_net_trains_and_evaluates_mask_rcnn_on_main(main_run, main_root):
    results = _results(main_run)
    assert set(results) >= {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert 0.0 <= results[task]["AP"] <= 100.0
    for name in ("model_final.pth", "model_0000001.pth", "config.yaml", "metrics.json"):
        assert (main_run / name).is_file(), name
    checkpoint = torch.load(main_run / "model_final.pth", map_location="cpu", weights_only=False)
    # main's trainer state is written (and read back on resume, see below).
    assert checkpoint["trainer"]["_trainer"]["iteration"] == 3
    assert checkpoint["iteration"] == 3


def test_resume_on_main_continues_from_the_last_checkpoint(main_run, main_root, data_flags,
                                                           tmp_path):
    output = tmp_path / "resumed"
    shutil.copytree(main_run, output)
    log = _run(_train_net(data_flags, output, "SOLVER.MAX_ITER", "6", "DATASETS.TEST", "()",
                          flags=["--resume"]), tmp_path / "resume.log", main_root)
    assert "Starting training from iteration 4" in log
    checkpoint = torch.load(output / "model_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 5


def test_checkpoint_written_on_main_resumes_on_v06(main_run, data_flags, tmp_path):
    output = tmp_path / "on_v06"
    shutil.copytree(main_run, output)
    log = _run(_train_net(data_flags, output, "SOLVER.MAX_ITER", "6", "DATASETS.TEST", "()",
                          flags=["--resume"]), tmp_path / "v06.log")
    assert "v0.6 flavour" in _flavour_line(log)
    assert "Starting training from iteration 4" in log


def test_checkpoint_of_stock_v06_trainer_resumes_on_main(main_root, data_flags, tmp_path):
    """A checkpoint from Detectron2 v0.6's own DefaultTrainer (no '_trainer' state: main's
    DefaultTrainer raises KeyError on it) resumes on main through the project's trainer."""
    from detectron2.engine import DefaultTrainer

    from resbackbones.engine.launch import build_argument_parser, setup_cfg

    output = tmp_path / "stock_v06"
    args = build_argument_parser().parse_args(
        ["--config-file", QUICK, *data_flags, *TINY, "OUTPUT_DIR", str(output),
         "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "MODEL.MASK_ON", "False"])
    trainer = DefaultTrainer(setup_cfg(args))  # this process: v0.6, stock trainer
    trainer.resume_or_load(resume=False)
    trainer.train()
    written = torch.load(output / "model_final.pth", map_location="cpu", weights_only=False)
    assert "_trainer" not in written["trainer"]  # what v0.6 writes

    log = _run(_train_net(data_flags, output, "SOLVER.MAX_ITER", "4", "DATASETS.TEST", "()",
                          "MODEL.MASK_ON", "False", flags=["--resume"]),
               tmp_path / "main.log", main_root)
    assert "Starting training from iteration 2" in log
    assert "has no '_trainer' state" in log


def test_two_process_launcher_trains_faster_rcnn_on_main(main_root, data_flags, tmp_path):
    output = tmp_path / "two"
    log = _run(_train_net(data_flags, output, "SOLVER.MAX_ITER", "2", "MODEL.MASK_ON", "False",
                          "MODEL.DEVICE", "cpu", "MODEL.RESBACKBONE.NORM", "naiveSyncBN",
                          flags=["--num-gpus", "2"]), tmp_path / "two.log", main_root)
    results = _results(output)
    assert "bbox" in results and "segm" not in results
    assert "Weights agree on all 2 ranks" in log
    assert "terminate called" not in log


def test_torchrun_trains_mask_rcnn_on_main(main_root, data_flags, tmp_path):
    output = tmp_path / "torchrun"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", *_train_net(data_flags, output, "SOLVER.MAX_ITER", "2", "MODEL.DEVICE", "cpu",
                             "MODEL.RESBACKBONE.NORM", "naiveSyncBN")[1:]]
    log = _run(argv, tmp_path / "torchrun.log", main_root)
    assert "Started by LaunchEnvironment(kind='torchrun'" in log
    assert set(_results(output)) >= {"bbox", "segm"}
    assert "terminate called" not in log


def test_onnx_export_on_main_matches_its_eager_model(main_run, main_root, tmp_path):
    pytest.importorskip("onnxruntime")
    exported = tmp_path / "onnx"
    _run([sys.executable, str(REPO / "tools/export_model.py"), "--config-file",
          str(main_run / "config.yaml"), "--format", "onnx", "--output", str(exported),
          "MODEL.WEIGHTS", str(main_run / "model_final.pth"), "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
          "0.0"], tmp_path / "export.log", main_root)
    meta = json.loads((exported / META_FILE).read_text())
    sample = meta["sample"]
    assert sample["detections"] > 0
    assert sample["parity_with_eager"]["matched"] == sample["detections"]
    assert sample["parity_with_eager"]["classes_equal"]


def _demo_outputs(directory: Path) -> Dict[str, object]:
    return {path.name: json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))}


def _assert_close(a, b, path="") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(float(a) - float(b)) <= 1e-3 * max(1.0, abs(float(b))), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_demo_predictor_gives_the_same_detections_on_main_and_v06(main_run, main_root,
                                                                   data_flags, tmp_path):
    images = data_flags[data_flags.index("--dataset", 2) + 1].split(":", 1)[1]
    outputs = {}
    for flavour, root in (("main", main_root), ("v0.6", None)):
        out = tmp_path / flavour
        _run([sys.executable, str(REPO / "tools/demo.py"), "--config-file",
              str(main_run / "config.yaml"), "--input", images, "--output", str(out),
              "--confidence-threshold", "0.0", "--device", "cpu", "--opts", "MODEL.WEIGHTS",
              str(main_run / "model_final.pth")], tmp_path / f"demo_{flavour}.log", root)
        outputs[flavour] = _demo_outputs(out)
    assert outputs["main"], "the demo wrote no JSON"
    _assert_close(outputs["main"], outputs["v0.6"])


def test_resunetpp_trains_and_evaluates_on_main(main_root, tmp_path):
    project = REPO / "projects" / "ResUNetPlusPlus"
    sys.path.insert(0, str(project))
    try:
        from resunetpp.data import SyntheticPolypSpec, generate_synthetic_polyps
        from resunetpp.engine import QUICKSTART_CONFIG
    finally:
        sys.path.remove(str(project))
    data = generate_synthetic_polyps(str(tmp_path / "data"), SyntheticPolypSpec(12, 40, 48))
    output = tmp_path / "train"
    argv = [sys.executable, str(project / "train_net.py"), "--config-file", QUICKSTART_CONFIG,
            "--dataset", f"rupp_tiny=kvasir:{data}", "OUTPUT_DIR", str(output),
            "DATASETS.TRAIN", "('rupp_tiny_train',)", "DATASETS.TEST", "('rupp_tiny_val',)",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()",
            "RESUNETPP.INPUT.SIZE", "[32, 32]", "DATALOADER.NUM_WORKERS", "0",
            "MODEL.RESUNETPP.PAPER_ENCODER_CHANNELS", "[8, 16, 32]",
            "MODEL.RESUNETPP.BRIDGE_CHANNELS", "32", "MODEL.RESUNETPP.HEAD_CHANNELS", "8"]
    _run(argv, tmp_path / "resunetpp.log", main_root, cwd=project)
    results = json.loads((output / "eval_results.json").read_text())
    semantic = results["sem_seg"]
    assert "mIoU" in semantic and "segmentation" in results
    assert not [key for key in semantic if "Boundary" in key or "B-Iou" in key]
