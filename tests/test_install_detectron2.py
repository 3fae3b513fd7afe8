"""The Detectron2 installer and the backports it applies, checked on the installed detectron2."""
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTALLER_PATH = REPO_ROOT / "tools" / "install_detectron2.py"


def _load_installer():
    spec = importlib.util.spec_from_file_location("install_detectron2", INSTALLER_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


installer = _load_installer()


def _own_build() -> bool:
    import detectron2

    return "+resbackbones." in detectron2.__version__


requires_own_build = pytest.mark.skipif(
    not _own_build(), reason="detectron2 was not built by tools/install_detectron2.py"
)


def test_detectron2_subpackages_import():
    import detectron2.data
    import detectron2.engine
    import detectron2.evaluation
    import detectron2.modeling

    assert callable(detectron2.modeling.build_model)
    assert callable(detectron2.engine.launch)
    assert hasattr(detectron2.evaluation, "COCOEvaluator")
    assert hasattr(detectron2.data, "MetadataCatalog")


@requires_own_build
def test_installed_version_is_this_installers_current_build():
    from importlib.metadata import version

    import detectron2

    assert version("detectron2") == installer.WHEEL_VERSION
    assert detectron2.__version__ == installer.WHEEL_VERSION


def test_polygon_to_mask_works_with_numpy2():
    from detectron2.structures.masks import PolygonMasks, polygons_to_bitmask

    square = [np.array([2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0])]
    mask = polygons_to_bitmask(square, 10, 10)
    assert mask.dtype == bool and mask.shape == (10, 10)
    assert mask[5, 5] and not mask[0, 0]
    assert not polygons_to_bitmask([], 4, 4).any()
    nonempty = PolygonMasks([square, []]).nonempty()
    assert nonempty.tolist() == [True, False]


def test_transforms_work_with_installed_pillow():
    from detectron2.data.transforms import ExtentTransform, ResizeTransform

    image = (np.arange(20 * 30 * 3) % 255).astype(np.uint8).reshape(20, 30, 3)
    extent = ExtentTransform(src_rect=(0, 0, 30, 20), output_size=(10, 15))
    assert extent.apply_image(image).shape == (10, 15, 3)
    resize = ResizeTransform(20, 30, 40, 60)
    assert resize.apply_image(image).shape == (40, 60, 3)


def test_dataset_histogram_uses_builtin_int():
    from detectron2.data.build import print_instances_class_histogram

    dataset_dicts = [{"annotations": [{"category_id": 0}, {"category_id": 1}]}]
    print_instances_class_histogram(dataset_dicts, ["a", "b"])


def test_every_model_zoo_config_is_found():
    from detectron2 import model_zoo

    root = Path(model_zoo.__file__).parent / "configs"
    configs = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))
    assert len(configs) >= 90
    assert "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml" in configs
    for name in configs:
        assert os.path.isfile(model_zoo.get_config_file(name)), name


@pytest.mark.parametrize(
    "call, op_name",
    [
        (lambda: __import__("detectron2.layers.rotated_boxes", fromlist=["x"])
         .pairwise_iou_rotated(torch.zeros(1, 5), torch.zeros(1, 5)), "box_iou_rotated"),
        (lambda: __import__("detectron2.layers.nms", fromlist=["x"])
         .nms_rotated(torch.zeros(1, 5), torch.zeros(1), 0.5), "nms_rotated"),
        (lambda: __import__("detectron2.layers", fromlist=["x"])
         .ROIAlignRotated((2, 2), 1.0, 0)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 6)),
         "roi_align_rotated_forward"),
    ],
)
@requires_own_build
def test_cpp_only_op_raises_clear_error(call, op_name):
    with pytest.raises(RuntimeError) as error:
        call()
    message = str(error.value)
    assert op_name in message and "C++" in message and "build detectron2 from source" in message


@requires_own_build
def test_fast_coco_eval_error_says_how_to_evaluate():
    from detectron2.evaluation import fast_eval_api

    with pytest.raises(RuntimeError, match="use_fast_impl=False"):
        fast_eval_api._C.COCOevalAccumulate


def test_rewrite_refuses_unexpected_source():
    rewrite = installer.SourceRewrite("x.py", "old()", "new()", 1, "test")
    assert rewrite.apply("a = old()\n") == "a = new()\n"
    with pytest.raises(installer.RewriteMismatch, match=r"detectron2/x\.py.*expected 1.*found 0"):
        rewrite.apply("a = changed()\n")
    with pytest.raises(installer.RewriteMismatch, match="found 2"):
        rewrite.apply("old()\nold()\n")


def test_numpy_alias_rewrite_leaves_sized_types_alone():
    rewrite = installer.SourceRewrite("x.py", installer._NUMPY_ALIAS, r"\1", 2, "t", regex=True)
    text = "a = np.int64(1)\nb = x.astype(np.bool)\nc = np.bool_\nd = np.float\n"
    assert rewrite.apply(text) == "a = np.int64(1)\nb = x.astype(bool)\nc = np.bool_\nd = float\n"


def test_decide_action():
    assert installer.decide_action(None) == "install"
    user_build = {"version": "0.6", "dist_version": "0.6", "location": "/x", "has_cpp_ops": True}
    assert installer.decide_action(user_build) == "keep"
    assert installer.decide_action(user_build, force=True) == "install"
    current = {"version": installer.WHEEL_VERSION, "dist_version": installer.WHEEL_VERSION}
    assert installer.decide_action(current) == "up-to-date"
    older = {"version": "0.6+resbackbones.0", "dist_version": "0.6+resbackbones.0"}
    assert installer.decide_action(older) == "upgrade"


def test_sdist_checksum_mismatch_is_refused_and_kept_aside(tmp_path):
    (tmp_path / installer.SDIST_FILENAME).write_bytes(b"not the sdist")
    with pytest.raises(RuntimeError, match="does not match the expected"):
        installer.download_sdist(sys.executable, tmp_path)
    assert not (tmp_path / installer.SDIST_FILENAME).exists()
    assert (tmp_path / installer.SDIST_FILENAME).with_suffix(".bad").read_bytes() == b"not the sdist"


CACHED_SDIST = installer.DEFAULT_CACHE / installer.SDIST_FILENAME


@pytest.mark.skipif(not CACHED_SDIST.exists(), reason="no cached sdist (detectron2 was kept)")
def test_all_rewrites_match_the_real_sdist(tmp_path):
    package = installer.extract_package(CACHED_SDIST, tmp_path)
    installer.apply_rewrites(package)
    for rewrite in installer.SOURCE_REWRITES:
        text = (package / rewrite.path).read_text()
        if not rewrite.regex:
            assert rewrite.new in text, rewrite.path
    assert (package / "_C_lazy.py").exists()
    with tarfile.open(CACHED_SDIST) as archive:
        assert not any("/layers/csrc/" in name for name in archive.getnames())


def test_second_run_keeps_installed_detectron2():
    result = subprocess.run([sys.executable, str(INSTALLER_PATH)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("already installed" in result.stdout) or ("keeping" in result.stdout)
    assert "downloading" not in result.stdout


def test_readme_lists_every_rewrite():
    readme = (REPO_ROOT / "README.md").read_text()
    assert installer.list_rewrites_markdown() in readme


def _all_reduce_worker(out_dir):
    import torch.distributed as dist
    from torch import nn

    from detectron2.engine.defaults import create_ddp_model
    from detectron2.utils import comm

    value = torch.tensor([float(comm.get_rank() + 1)])
    dist.all_reduce(value)
    model = create_ddp_model(nn.Linear(2, 1))
    model(torch.ones(3, 2)).sum().backward()
    Path(out_dir, f"rank{comm.get_rank()}").write_text(
        f"{dist.get_backend()} {value.item()} {type(model).__name__}"
    )
    from resbackbones.engine.distributed import leave_process_group

    leave_process_group()  # Gloo groups left to interpreter shutdown can abort the process


@pytest.mark.slow
def test_distributed_launch_runs_on_cpu_with_gloo(tmp_path):
    from detectron2.engine import launch

    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU path")
    launch(_all_reduce_worker, 2, dist_url="auto", args=(str(tmp_path),))
    results = sorted(p.read_text() for p in tmp_path.iterdir())
    assert results == ["gloo 3.0 DistributedDataParallel"] * 2
