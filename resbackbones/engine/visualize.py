"""Draw a model's predictions on a few images of a dataset, for a quick look at what it learnt."""
from __future__ import annotations

import os
from typing import List

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image

from resbackbones._requirements import require_extra

__all__ = ["draw_predictions"]


@torch.no_grad()
def draw_predictions(cfg: CfgNode, model: torch.nn.Module, dataset_name: str, output_dir: str,
                     num_images: int = 4, score_threshold: float = 0.25) -> List[str]:
    """Run ``model`` on the first ``num_images`` images of ``dataset_name`` and save drawings.

    Args:
        cfg: the config the model was built from (input format and test resizing).
        model: a Detectron2 meta-architecture (a DDP wrapper is unwrapped).
        dataset_name: a registered dataset.
        output_dir: directory for ``<image name>.png`` files (created).
        num_images: how many images to draw.
        score_threshold: detections below this score are not drawn.

    Returns:
        Paths of the written images.

    Raises:
        MissingExtraError: OpenCV or matplotlib (the ``plots`` extra) is not installed; Detectron2's
            ``Visualizer`` imports both.
    """
    for module in ("cv2", "matplotlib"):
        require_extra("plots", module, "Drawing predictions with Detectron2's Visualizer")
    from detectron2.utils.visualizer import Visualizer

    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    metadata = MetadataCatalog.get(dataset_name)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    try:
        for record in DatasetCatalog.get(dataset_name)[:num_images]:
            rgb = read_image(record["file_name"], format="RGB")
            model_input = rgb if cfg.INPUT.FORMAT == "RGB" else rgb[:, :, ::-1]
            resized = resize.get_transform(model_input).apply_image(model_input)
            image = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
            outputs = model([{"image": image, "height": rgb.shape[0], "width": rgb.shape[1]}])[0]
            instances = outputs["instances"].to("cpu")
            instances = instances[instances.scores >= score_threshold]
            drawing = Visualizer(rgb, metadata).draw_instance_predictions(instances)
            name = os.path.splitext(os.path.basename(record["file_name"]))[0] + ".png"
            path = os.path.join(output_dir, name)
            drawing.save(path)
            written.append(path)
    finally:
        model.train(was_training)
    return written
