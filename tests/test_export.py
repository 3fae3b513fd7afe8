"""Export to TorchScript and ONNX: the exported model equals the eager one.

Models are tiny (128x160 test size, narrow heads) with random weights made to detect like a
trained model: frozen BN statistics calibrated on the input, a box classifier biased towards one
class with spread-out logits (so that no two detections are near-tied and a 1e-6 difference
cannot swap them) and a mask predictor scaled so that mask probabilities are not all near the
0.5 threshold. The eager reference is the project's own model with its default speed-ups
(``DemoPredictor``, i.e. Detectron2's test-time resize and postprocess).

Parity (per detection matched by box IoU and class): boxes within 0.5 px, scores within 1e-3, the
same classes, mask IoU >= 0.99 (28x28 model outputs, and masks pasted into the traced image); on
an image of another size, pasted masks >= 0.95 (>= 0.9 under 400 px: a 0.05 px box difference
moves a few of their boundary pixels).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from resbackbones.deploy.export import (
    RUNTIME_ONLY_SETTINGS,
    ExportError,
    export_config,
    export_detector,
    export_model,
    load_export_model,
    sample_image,
)
from resbackbones.deploy.onnx_runner import META_FILE

pytest.importorskip("onnxruntime")

from export_helpers import (  # noqa: E402
    FASTER_RCNN,
    MASK_RCNN,
    ONE_PER_FAMILY,
    RETINANET,
    TINY,
    assert_matched_up_to_the_cap,
    assert_same_detections,
    eager_detections,
    model_input,
    other_image,
    runner_detections,
    write_checkpoint,
)


def test_detectron2_export_imports_without_caffe2():
    from detectron2.export import TracingAdapter, scripting_with_instances  # noqa: F401

    with pytest.raises(ImportError):
        import caffe2  # noqa: F401


def _export_and_compare(tmp_path, config_file, arch):
    opts = write_checkpoint(tmp_path, config_file, arch)
    result = export_model(config_file, str(tmp_path / "export"), "onnx", opts=opts)
    assert result.sample_detections > 0
    # Raw outputs (28x28 masks) of ONNX Runtime vs PyTorch, as checked by the export itself.
    parity = result.parity
    assert parity["matched"] == parity["reference"] == parity["other"] > 0, parity
    assert parity["max_box_difference_px"] < 0.5 and parity["max_score_difference"] < 1e-3
    assert parity["classes_equal"] and parity.get("min_mask_iou", 1.0) >= 0.99, parity
    # End to end, the runner vs the project's eager model (default speed-ups) on the traced
    # image: every mask to 0.99.
    images = (sample_image(export_config(config_file, opts)), other_image())
    eager = eager_detections(config_file, opts, images[0])
    runner = runner_detections(tmp_path / "export", *images)
    assert_same_detections(eager, runner[0])
    # On an image of another size (resized 0.51x, masks pasted back 1.95x larger) against the
    # eager model computing what the export computes: the run-time-only speed-ups (Winograd's
    # ~1e-5 rounding, channels-last) are off in the export, and with them on, ResNet-RS's boxes
    # move by up to 0.06 px, enough to flip boundary pixels of the smallest pasted masks.
    same_arithmetic = list(opts) + ["MODEL.RESBACKBONE.WINOGRAD", "False",
                                    "MODEL.RESBACKBONE.CHANNELS_LAST", "off"]
    eager_other = eager_detections(config_file, same_arithmetic, images[1])
    assert_same_detections(eager_other, runner[1], large_mask_iou=0.95, small_mask_iou=0.9)
    return result


def test_mask_rcnn_resnet18_onnx_equals_eager_and_folder_is_complete(tmp_path):
    result = _export_and_compare(tmp_path, MASK_RCNN, "resnet18")
    folder = tmp_path / "export"
    assert sorted(os.listdir(folder)) == ["README.md", "config.yaml", "model.onnx", META_FILE]
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["class_names"] == ["class_0", "class_1", "class_2"]
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "classes", "masks"]
    assert meta["input"]["channel_order"] == "RGB" and meta["onnx_opset"] >= 16
    assert meta["speedups"]["baked_in"]["batchnorm_folded_into_convs"] == 20  # R18: 20 BNs
    assert meta["speedups"]["runtime_only_off_in_export"] == RUNTIME_ONLY_SETTINGS
    config_text = (folder / "config.yaml").read_text()
    assert "WINOGRAD: false" in config_text and "PARALLEL_ROI_ALIGN: false" in config_text
    readme = (folder / "README.md").read_text()
    assert "`masks`: float32 `(N, 1, 28, 28)`" in readme and "RGB" in readme
    # The exported graph has no BatchNormalization (folded) and ROIAlign is aligned (opset 16).
    import onnx

    graph = onnx.load(result.model_path).graph
    kinds = {node.op_type for node in graph.node}
    assert "BatchNormalization" not in kinds and "RoiAlign" in kinds
    roi_align = next(node for node in graph.node if node.op_type == "RoiAlign")
    mode = {a.name: onnx.helper.get_attribute_value(a) for a in roi_align.attribute}
    assert mode["coordinate_transformation_mode"] == b"half_pixel"


@pytest.mark.parametrize("config_file", [FASTER_RCNN, RETINANET], ids=["faster_rcnn",
                                                                      "retinanet"])
def test_box_detectors_onnx_equal_eager(tmp_path, config_file):
    result = _export_and_compare(tmp_path, config_file, "resnet18")
    assert [o["name"] for o in result.meta["outputs"]] == ["boxes", "scores", "classes"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_every_family_onnx_equals_eager(tmp_path, arch):
    _export_and_compare(tmp_path, MASK_RCNN, arch)


_RELOAD = """
import sys, numpy, torch, torchvision  # torchvision registers the NMS and ROIAlign ops
model = torch.jit.load(sys.argv[1])
assert not any(m.split(".")[0] in ("detectron2", "resbackbones") for m in sys.modules)
image = torch.from_numpy(numpy.load(sys.argv[2]))
with torch.no_grad():
    outputs = model(image)
numpy.savez(sys.argv[3], *[o.numpy() for o in outputs])
"""


def test_torchscript_reloads_in_a_fresh_process(tmp_path):
    opts = write_checkpoint(tmp_path, MASK_RCNN, "resnet18")
    result = export_model(MASK_RCNN, str(tmp_path / "ts"), "torchscript", opts=opts)
    assert result.model_path.endswith("model.ts") and result.parity["matched"] > 0
    cfg = export_config(MASK_RCNN, opts)
    image = model_input(cfg, other_image())
    np.save(tmp_path / "image.npy", image.numpy())
    # A process without resbackbones and detectron2: the file is self-contained.
    subprocess.run([sys.executable, "-c", _RELOAD, result.model_path, str(tmp_path / "image.npy"),
                    str(tmp_path / "out.npz")], check=True, timeout=120, cwd=tmp_path)
    loaded = np.load(tmp_path / "out.npz")
    reloaded = dict(zip(["boxes", "scores", "classes", "masks"],
                        [loaded[f"arr_{i}"] for i in range(4)]))
    model, _, _ = load_export_model(cfg)
    with torch.no_grad():
        instances = model.inference([{"image": image}], do_postprocess=False)[0]
    reference = {"boxes": instances.pred_boxes.tensor.numpy(), "scores": instances.scores.numpy(),
                 "classes": instances.pred_classes.numpy(), "masks": instances.pred_masks.numpy()}
    assert_same_detections(reference, reloaded)


def test_sample_image_without_detections_still_exports_a_general_graph(tmp_path):
    """Traced on an image with no detection above the threshold, the graph still detects on
    another image: tracing does not bake the number of detections in."""
    opts = write_checkpoint(tmp_path, MASK_RCNN, "resnet18")
    cfg = export_config(MASK_RCNN, opts)
    blank = np.full((128, 160, 3), 128, dtype=np.uint8)
    busy = sample_image(cfg)
    model, _, _ = load_export_model(cfg)
    with torch.no_grad():
        blank_top = float(model([{"image": model_input(cfg, blank)}])[0]["instances"].scores
                          .max())
        busy_scores = model([{"image": model_input(cfg, busy)}])[0]["instances"].scores
    assert float(busy_scores.max()) > blank_top + 1e-3, "the test needs content-dependent scores"
    threshold = (blank_top + float(busy_scores.max())) / 2
    opts += ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(threshold)]
    sample = tmp_path / "blank.png"
    Image.fromarray(blank).save(sample)
    result = export_model(MASK_RCNN, str(tmp_path / "export"), "onnx", opts=opts,
                          sample_image_path=str(sample))
    assert result.sample_detections == 0
    assert result.meta["sample"]["detections"] == 0
    assert_same_detections(eager_detections(MASK_RCNN, opts, busy),
                           runner_detections(tmp_path / "export", busy), small_mask_iou=0.9)


def test_class_names_from_registered_dataset_or_flag(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    opts = write_checkpoint(tmp_path, FASTER_RCNN, "resnet18")
    name = "resbackbones_export_test_shapes"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(thing_classes=["circle", "square", "triangle"])
    with_dataset = opts + ["DATASETS.TEST", f"('{name}',)"]
    result = export_model(FASTER_RCNN, str(tmp_path / "a"), "torchscript", opts=with_dataset)
    assert result.meta["class_names"] == ["circle", "square", "triangle"]
    assert name in result.meta["class_names_source"]
    with pytest.raises(ExportError, match="contradicts"):
        export_model(FASTER_RCNN, str(tmp_path / "b"), "onnx", opts=with_dataset,
                     class_names=["a", "b", "c"])
    with pytest.raises(ExportError, match="gives 2 names but the model has 3 classes"):
        export_model(FASTER_RCNN, str(tmp_path / "c"), "onnx", opts=opts, class_names=["a", "b"])
    result = export_model(FASTER_RCNN, str(tmp_path / "d"), "torchscript", opts=opts,
                          class_names=["cat", "dog", "bird"])
    assert result.meta["class_names"] == ["cat", "dog", "bird"]
    assert result.meta["class_names_source"] == "--class-names"
    # Without a registered dataset or the flag: the class_names.json training writes next to
    # MODEL.WEIGHTS.
    (tmp_path / "class_names.json").write_text(json.dumps({"thing_classes": ["x", "y", "z"]}))
    result = export_model(FASTER_RCNN, str(tmp_path / "e"), "torchscript", opts=opts)
    assert result.meta["class_names"] == ["x", "y", "z"]
    assert result.meta["class_names_source"].endswith("class_names.json")


def test_unsupported_meta_architecture_names_the_module_and_what_to_try(tmp_path):
    cfg = export_config(MASK_RCNN, TINY + ["MODEL.META_ARCHITECTURE", "PanopticFPN",
                                           "MODEL.WEIGHTS", "built-not-loaded.pth"])
    model = build_model(cfg).eval()
    with pytest.raises(ExportError) as error:
        export_detector(model, cfg, str(tmp_path / "out"), "onnx")
    message = str(error.value)
    assert "PanopticFPN (detectron2.modeling.meta_arch.panoptic_fpn)" in message
    assert "MODEL.META_ARCHITECTURE 'ResBackboneRCNN'" in message and "--method" in message


def test_operator_without_onnx_translation_names_the_module(tmp_path):
    opts = write_checkpoint(tmp_path, FASTER_RCNN, "resnet18")
    cfg = export_config(FASTER_RCNN, opts)
    model, _, _ = load_export_model(cfg)

    class UnexportableConv(torch.nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            y = self.conv(x)
            return y + 0 * torch.special.i1e(y)  # no ONNX symbolic for aten::special_i1e

    rpn_head = model.proposal_generator.rpn_head
    rpn_head.conv = UnexportableConv(rpn_head.conv)
    with pytest.raises(ExportError) as error:
        export_detector(model, cfg, str(tmp_path / "out"), "onnx")
    message = str(error.value)
    assert "proposal_generator.rpn_head.conv" in message and "special_i1e" in message
    assert "--format torchscript" in message
    # TorchScript keeps every operator: the same model exports that way.
    result = export_detector(model, cfg, str(tmp_path / "ts"), "torchscript")
    assert result.parity["matched"] == result.sample_detections > 0


def test_scripting_a_timm_backbone_fails_with_the_module_and_tracing_advice(tmp_path):
    opts = write_checkpoint(tmp_path, FASTER_RCNN, "resnet18")
    with pytest.raises(ExportError) as error:
        export_model(FASTER_RCNN, str(tmp_path / "out"), "torchscript", "scripting", opts=opts)
    message = str(error.value)
    assert "resbackbones/modeling/" in message and "--method tracing" in message
    with pytest.raises(ExportError, match="--format torchscript"):
        export_model(FASTER_RCNN, str(tmp_path / "out"), "onnx", "scripting", opts=opts)
    with pytest.raises(ExportError, match="opset 15 is too old"):
        export_model(FASTER_RCNN, str(tmp_path / "out"), "onnx", opts=opts, opset=15)


def test_export_cli_writes_the_folder(tmp_path, capsys):
    opts = write_checkpoint(tmp_path, FASTER_RCNN, "resnet18")
    from resbackbones.deploy import export_cli as tool  # tools/export_model.py's command line
    assert tool.main(["--config-file", FASTER_RCNN, "--format", "torchscript", "--output",
                      str(tmp_path / "cli"), "--class-names", "a,b,c", *opts]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / META_FILE).read_text())["class_names"] == ["a", "b", "c"]
    assert (tmp_path / "cli" / "model.ts").is_file()
    with pytest.raises(SystemExit, match="error: .*resnet51"):
        tool.main(["--config-file", FASTER_RCNN, "--format", "onnx", "--output",
                   str(tmp_path / "bad"), *opts, "MODEL.RESBACKBONE.ARCH", "resnet51"])
