"""GPU readiness on the CPU: the device fall-back rule, the process-group backend per device,
dataset validation once on rank 0 for all ranks, and the demo's RetinaNet subclasses.

CUDA is made unavailable (or available) only at ``torch.cuda.is_available``/``device_count``;
whether an NVIDIA GPU is installed is decided by ``devices.NVIDIA_EVIDENCE_PATHS``, pointed at a
file that exists or not. The rest of the CUDA paths is checked by ``tools/gpu_check.py``.
"""
import json
import logging
from pathlib import Path

import pytest
import torch

from resbackbones.engine import devices
from resbackbones.engine.devices import CudaUnavailableError, resolve_device

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml")


@pytest.fixture
def no_gpu(monkeypatch, tmp_path):
    """A machine without any NVIDIA GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "NVIDIA_EVIDENCE_PATHS", (str(tmp_path / "no-driver"),))


@pytest.fixture
def broken_cuda(monkeypatch, tmp_path):
    """An NVIDIA GPU is installed but CUDA does not start (e.g. a driver too old)."""
    driver = tmp_path / "nvidia-version"
    driver.write_text("NVRM version: 470.00\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "NVIDIA_EVIDENCE_PATHS", (str(driver),))
    return str(driver)


# --- 19.1: no silent fall-back to the CPU -----------------------------------------------------

def test_one_process_without_any_gpu_falls_back_to_cpu_with_a_warning(no_gpu, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_device("cuda") == "cpu"
    assert "no CUDA GPU: running on the CPU" in caplog.text
    assert "set MODEL.DEVICE cpu" in caplog.text


def test_explicit_and_non_cuda_devices_are_kept(no_gpu, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_device("cpu", world_size=8) == "cpu"
        assert resolve_device("meta") == "meta"
    assert not caplog.records


def test_several_processes_without_cuda_need_model_device_cpu(no_gpu):
    with pytest.raises(CudaUnavailableError) as error:
        resolve_device("cuda", world_size=4)
    message = str(error.value)
    assert "4 processes" in message and "MODEL.DEVICE cpu" in message


DRIVER_TOO_OLD = "The NVIDIA driver on your system is too old (found version 11040)."


@pytest.mark.parametrize("cuda_build, visible, expected", [
    ("13.0", None, f"RuntimeError: {DRIVER_TOO_OLD}"),  # CUDA's own error, from its start
    ("13.0", "", "CUDA_VISIBLE_DEVICES is set but empty"),
    (None, None, "CPU-only build"),
])
def test_gpu_present_but_cuda_cannot_start_is_an_error_with_the_cause(
        broken_cuda, monkeypatch, cuda_build, visible, expected):
    def failing_start():
        raise RuntimeError(DRIVER_TOO_OLD)

    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    monkeypatch.setattr(torch.cuda, "init", failing_start)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with pytest.raises(CudaUnavailableError) as error:
        resolve_device("cuda", world_size=1)
    message = str(error.value)
    assert broken_cuda in message and "CUDA cannot start" in message and expected in message
    assert "MODEL.DEVICE cpu" in message  # the way out, if the CPU is really wanted


def test_cuda_index_beyond_the_visible_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1", world_size=2) == "cuda:1"
    with pytest.raises(CudaUnavailableError, match="2 visible GPU"):
        resolve_device("cuda:2")


def test_build_cfg_applies_the_rule(no_gpu, caplog):
    from resbackbones.engine.launch import build_cfg

    with caplog.at_level(logging.WARNING):
        assert build_cfg(QUICK).MODEL.DEVICE == "cpu"
    assert "running on the CPU" in caplog.text


def test_build_cfg_refuses_cpu_training_on_a_gpu_machine_with_broken_cuda(broken_cuda):
    from resbackbones.engine.launch import build_cfg

    with pytest.raises(CudaUnavailableError, match="CUDA cannot start"):
        build_cfg(QUICK)
    assert build_cfg(QUICK, ["MODEL.DEVICE", "cpu"]).MODEL.DEVICE == "cpu"


def _demo_config(*args, **kwargs):
    """The demo's config builder."""
    from resbackbones.demo.predictor import build_inference_config

    return build_inference_config(*args, **kwargs)


def test_demo_refuses_cpu_on_a_gpu_machine_with_broken_cuda(broken_cuda):
    with pytest.raises(CudaUnavailableError):
        _demo_config(QUICK)
    assert _demo_config(QUICK, device="cpu").MODEL.DEVICE == "cpu"


def test_demo_falls_back_without_a_gpu(no_gpu):
    assert _demo_config(QUICK).MODEL.DEVICE == "cpu"


def _launched(monkeypatch, argv):
    """Run tools/train_net.py's run() up to resbackbones' launch(); return the keyword arguments
    it was called with, plus ``processes`` (its processes per machine)."""
    from resbackbones.engine import launch as launch_module

    calls = []
    monkeypatch.setattr(launch_module, "launch", lambda main_func, processes, **kwargs:
                        calls.append({**kwargs, "processes": processes}))
    launch_module.run(["--config-file", QUICK, *argv])
    return calls


def test_num_gpus_without_cuda_fails_before_spawning(no_gpu, monkeypatch):
    with pytest.raises(CudaUnavailableError, match="MODEL.DEVICE cpu"):
        _launched(monkeypatch, ["--num-gpus", "2"])
    # With the CPU asked for, the same command starts 2 Gloo processes on one machine.
    (call,) = _launched(monkeypatch, ["--num-gpus", "2", "MODEL.DEVICE", "cpu"])
    assert (call["processes"], call["num_machines"], call["backend"]) == (2, 1, "gloo")
    assert call["args"][0].opts == ["MODEL.DEVICE", "cpu"]


# --- 19.3: the backend follows the run's device ------------------------------------------------

def test_cpu_run_on_a_gpu_machine_uses_gloo_and_a_cuda_run_nccl(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cpu = _launched(monkeypatch, ["--num-gpus", "2", "MODEL.DEVICE", "cpu"])
    cuda = _launched(monkeypatch, ["--num-gpus", "2"])
    assert [c["backend"] for c in cpu + cuda] == ["gloo", "nccl"]


def test_installed_detectron2_launch_takes_the_backend():
    import inspect

    from detectron2.engine import launch
    from detectron2.engine.launch import _distributed_worker

    assert inspect.signature(launch).parameters["backend"].default is None
    assert "backend" in inspect.signature(_distributed_worker).parameters


# --- 19.2: dataset validation once, on rank 0, outcome shared ---------------------------------

def _validation_worker(json_file, image_root, bad_json_file, out_dir):
    """In each of 2 Gloo processes: count image opens during validation, record the outcome."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.utils import comm
    from PIL import Image

    from resbackbones.engine.distributed import validate_datasets_on_main_process

    opens = []
    original_open = Image.open

    def counting_open(*args, **kwargs):
        opens.append(args[0])
        return original_open(*args, **kwargs)

    Image.open = counting_open
    register_coco_instances("good", {}, json_file, image_root)
    register_coco_instances("bad_skipped", {}, bad_json_file, image_root)
    register_coco_instances("bad_refused", {}, bad_json_file, image_root)
    record = {}
    validate_datasets_on_main_process(["good"], "header", False, out_dir)
    record["good_opens"] = len(opens)
    validate_datasets_on_main_process(["bad_skipped"], "header", True, out_dir)
    record["skipped_opens"] = len(opens) - record["good_opens"]
    record["skipped_records"] = len(DatasetCatalog.get("bad_skipped"))
    try:
        validate_datasets_on_main_process(["bad_refused"], "header", False, out_dir)
        record["refused"] = None
    except Exception as error:
        record["refused"] = f"{type(error).__name__}: {error}"
    Path(out_dir, f"rank{comm.get_rank()}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_two_processes_validate_once_and_fail_or_go_on_together(tmp_path):
    import time

    from resbackbones.data import SyntheticSpec, generate_synthetic_coco, synthetic_paths
    # The project's launch: its rendezvous on a port the system picks, and every worker leaves
    # the process group in finally (Detectron2's "auto" URL probes a port and releases it).
    from resbackbones.engine.distributed import launch

    generate_synthetic_coco(str(tmp_path / "data"), SyntheticSpec(num_train=6, num_val=1,
                                                                  seed=2, height=64, width=80))
    json_file, image_root = synthetic_paths(str(tmp_path / "data"), "train")
    data = json.loads(Path(json_file).read_text())
    broken = data["images"][0]["file_name"]
    bad_root = tmp_path / "bad_images"
    bad_root.mkdir()
    for image in data["images"]:
        target = bad_root / image["file_name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        source = Path(image_root, image["file_name"]).read_bytes()
        target.write_bytes(b"not an image" if image["file_name"] == broken else source)
    bad_json = tmp_path / "bad.json"
    # Both sets are registered with the good image root; the bad JSON names the copies by
    # absolute path, one of them corrupted.
    for image in data["images"]:
        image["file_name"] = str(bad_root / image["file_name"])
    bad_json.write_text(json.dumps(data))
    start = time.perf_counter()
    launch(_validation_worker, 2,
           args=(json_file, image_root, str(bad_json), str(tmp_path / "out")))
    print(f"2 Gloo processes, dataset validation: {time.perf_counter() - start:.1f} s wall")
    ranks = [json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    num_images = len(data["images"])
    assert [r["good_opens"] for r in ranks] == [num_images, 0]
    assert [r["skipped_opens"] for r in ranks] == [num_images, 0]
    assert [r["skipped_records"] for r in ranks] == [num_images - 1] * 2
    assert ranks[0]["refused"].startswith("DatasetValidationError")
    assert ranks[1]["refused"].startswith("DatasetValidationFailedElsewhere")
    assert "unreadable_image" in ranks[1]["refused"] and broken in ranks[1]["refused"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == [
        "bad_skipped.rank0.json", "bad_skipped.rank1.json", "rank0.json", "rank1.json"]


# --- 19.9: the demo knows RetinaNet subclasses ------------------------------------------------

def test_demo_counts_classes_of_resbackbone_retinanet(no_gpu):
    from resbackbones.demo.predictor import DemoPredictor

    cfg = _demo_config(str(REPO / "configs/COCO-Detection/retinanet_resnet50_FPN_1x.yaml"), [
        "MODEL.RESBACKBONE.ARCH", "resnet18", "MODEL.RESBACKBONE.NORM", "BN",
        "MODEL.RESBACKBONE.WEIGHTS", "", "MODEL.RETINANET.NUM_CLASSES", "3",
        "MODEL.ROI_HEADS.NUM_CLASSES", "80", "DATASETS.TEST", "()"])
    assert cfg.MODEL.META_ARCHITECTURE == "ResBackboneRetinaNet"
    predictor = DemoPredictor(cfg)
    assert predictor.class_names == ["class_0", "class_1", "class_2"]


# --- the one-shot GPU check refuses a machine without CUDA ---------------------------------------

def test_gpu_check_exits_at_once_without_cuda():
    """It says so before any heavy import: ``python -X importtime`` lists every module the run
    imported, and none of Detectron2, timm or resbackbones may be among them (a fact about the
    code, whatever the machine's speed)."""
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: run `make gpu-check` instead")
    result = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "tools/gpu_check.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "CUDA is not available here" in result.stderr and "--smoke" in result.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    assert "torch" in imported  # the listing works: the CUDA check itself needs torch
    heavy = sorted(name for name in imported
                   if name.split(".")[0] in ("detectron2", "timm", "resbackbones", "fvcore"))
    assert not heavy, f"imported before the CUDA check: {heavy}"
