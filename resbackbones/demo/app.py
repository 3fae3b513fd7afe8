"""The Gradio page: upload an image, see boxes, labels and masks, a table and a COCO JSON.

The logic lives in :class:`DetectionDemo`, whose methods take plain values and return plain
values, so tests call it without a server; :func:`build_app` only lays out components and wires
events to it. Security: the page reads only the files Gradio itself stored for an upload (the
event receives Gradio's validated upload payload, never a path typed by a user), writes its JSON
downloads to its own temp folder, and is launched without ``allowed_paths``.
"""
from __future__ import annotations

import base64
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from resbackbones._requirements import require_extra
from resbackbones.checkpoint import WeightsUnavailableError

from .drawing import DRAW_PARTS, draw_detections
from .examples import make_example_images
from .images import ImageDecodeError
from .photos import make_photo_examples
from resbackbones.results_format import image_id_from_name

from .predictor import DemoPredictor, Prediction
from .results import (
    ONE_LABEL_IOU,
    TABLE_HEADERS,
    coco_results,
    detection_rows,
    filter_instances,
    write_coco_json,
)

__all__ = ["DemoResult", "DetectionDemo", "build_app", "launch_app"]

logger = logging.getLogger(__name__)

# A model given as a ready predictor or as a function that builds it on first use.
ModelSource = Union[DemoPredictor, Callable[[], DemoPredictor]]


@dataclass
class DemoResult:
    """What the page shows for one request.

    Attributes:
        image: the drawn RGB image (on the copy decoding downscaled to the test size, for a
            large upload), or ``None`` when the input could not be used.
        rows: detections table rows (see :data:`~resbackbones.demo.results.TABLE_HEADERS`),
            in the upload's pixels.
        json_path: the results file offered for download (``resbackbones.results_format``, in
            the upload's pixels), or ``None``.
        message: Markdown status line: model, device, timings, counts, or what went wrong.
        error: ``True`` when ``message`` explains a failure (the page also raises a warning).
        prediction: the raw prediction, kept so that threshold/class changes only redraw.
    """

    image: Optional[np.ndarray]
    rows: List[List[Any]]
    json_path: Optional[str]
    message: str
    error: bool = False
    prediction: Optional[Prediction] = None
    timings: Dict[str, float] = field(default_factory=dict)


class DetectionDemo:
    """Named models plus the request logic of the page.

    Args:
        models: display name → predictor (or a zero-argument function building it; built on
            first use, once, under a lock). The first is the default.
        output_dir: where JSON downloads are written (default: a fresh temp folder).
    """

    def __init__(self, models: Mapping[str, ModelSource], output_dir: Optional[str] = None):
        if not models:
            raise ValueError("DetectionDemo needs at least one model.")
        self._sources: Dict[str, ModelSource] = dict(models)
        self._built: Dict[str, DemoPredictor] = {
            name: source for name, source in self._sources.items()
            if isinstance(source, DemoPredictor)
        }
        self._lock = threading.Lock()
        self.output_dir = output_dir or tempfile.mkdtemp(prefix="resbackbones-demo-")

    @property
    def model_names(self) -> List[str]:
        """Display names, default first."""
        return list(self._sources)

    def predictor(self, name: Optional[str] = None) -> DemoPredictor:
        """The predictor called ``name`` (default model when ``None``), built on first use."""
        name = name or self.model_names[0]
        if name not in self._sources:
            raise ValueError(f"Unknown model {name!r}; available: {self.model_names}.")
        with self._lock:
            if name not in self._built:
                logger.info(f"Building model {name!r} ...")
                self._built[name] = self._sources[name]()
            return self._built[name]

    def class_names(self, model_name: Optional[str] = None) -> List[str]:
        """Class names of a model (for the class filter)."""
        return list(self.predictor(model_name).class_names)

    def is_built(self, model_name: str) -> bool:
        """Whether the model called ``model_name`` is loaded (building it has succeeded)."""
        return model_name in self._built

    def select_model(self, model_name: str) -> Tuple[List[str], Optional[str]]:
        """Build a model chosen in the dropdown, turning a failure into a message.

        A model whose weights cannot be had (offline) or do not fit must not take the page down:
        the others keep working, and choosing it again retries (e.g. once the file is copied).

        Returns:
            ``(class names, None)``, or ``([], message saying what failed and how to fix it)``.
        """
        try:
            return self.class_names(model_name), None
        except Exception as err:
            logger.warning(f"Model {model_name!r} could not be loaded: {err}")
            return [], f"Model {model_name!r} is not available: {err}"

    def detect(
        self,
        upload: Any,
        model_name: Optional[str] = None,
        score_threshold: float = 0.5,
        classes: Optional[Sequence[str]] = None,
        parts: Optional[Sequence[str]] = None,
        one_label: bool = True,
    ) -> DemoResult:
        """Decode an upload, run the model and render the result; never raises for bad input.

        Args:
            upload: Gradio's upload payload (a dict with ``path``/``url``), a path, bytes, a
                Pillow image or an RGB array; ``None`` when the input was cleared.
            model_name: which model (default: the first).
            score_threshold: minimum score shown.
            classes: class names to show; empty or ``None`` shows all.
            parts: which of ``boxes``, ``masks``, ``labels`` to draw (``None``: all).
            one_label: show one label per object: hide a detection whose box overlaps a
                higher-scored one of another class (IoU >= :data:`ONE_LABEL_IOU`).

        Returns:
            The result; on bad input ``image`` is ``None`` and ``message`` says why.
        """
        if upload is None:
            return DemoResult(None, [], None, "Upload an image or pick an example.")
        try:
            predictor = self.predictor(model_name)
            data, display_name = _upload_bytes(upload)
            start = time.perf_counter()
            decoded = predictor.decode(data, name=display_name)
            decode_time = time.perf_counter() - start
            prediction = predictor.predict(decoded)
            prediction.timings["preprocess"] += decode_time
        except ImageDecodeError as err:
            return DemoResult(None, [], None, str(err), error=True)
        except WeightsUnavailableError as err:  # offline: the message says where to put the file
            return DemoResult(None, [], None, f"Model {model_name!r} is not available: {err}",
                              error=True)
        except (ValueError, FileNotFoundError) as err:
            return DemoResult(None, [], None, str(err), error=True)
        except RuntimeError as err:  # out of memory, an operator missing on this install, ...
            logger.exception("The model failed")
            return DemoResult(None, [], None, f"The model failed on this image: {err}",
                              error=True)
        stem = _safe_stem(display_name)
        return self.render(prediction, model_name, score_threshold, classes, parts, stem,
                           one_label)

    def render(
        self,
        prediction: Optional[Prediction],
        model_name: Optional[str] = None,
        score_threshold: float = 0.5,
        classes: Optional[Sequence[str]] = None,
        parts: Optional[Sequence[str]] = None,
        image_stem: str = "upload",
        one_label: bool = True,
    ) -> DemoResult:
        """Filter a prediction, draw it, tabulate it and write its JSON (no model call).

        Args:
            prediction: from :meth:`detect` (``None``: nothing to render yet).
            model_name, score_threshold, classes, parts, one_label: as in :meth:`detect`.
            image_stem: used in the JSON file name and as the ``image_id``
                (``results_format.image_id_from_name``: an int for a COCO file name).

        Returns:
            The result.
        """
        if prediction is None:
            return DemoResult(None, [], None, "Upload an image or pick an example.")
        predictor = self.predictor(model_name)
        names = predictor.class_names
        unknown = [c for c in (classes or []) if c not in names]
        if unknown:
            message = f"Unknown classes {unknown} for model {predictor.name!r}; valid: {names}."
            return DemoResult(None, [], None, message, error=True, prediction=prediction)
        class_ids = [names.index(c) for c in classes or []]
        kept = filter_instances(prediction.instances, score_threshold, class_ids)
        shown = filter_instances(kept, cross_class_iou=ONE_LABEL_IOU) if one_label else kept
        duplicates, kept = len(kept) - len(shown), shown
        start = time.perf_counter()
        drawn = draw_detections(prediction.image, kept, names, parts)
        draw_time = time.perf_counter() - start
        # Drawn on the decoded copy; reported in the upload's pixels.
        results = coco_results(kept, image_id_from_name(image_stem),
                               predictor.metadata.get("thing_dataset_id_to_contiguous_id", None),
                               names, prediction.input_size)
        json_path = write_coco_json(results, os.path.join(
            self.output_dir, f"detections_{image_stem}_{uuid.uuid4().hex[:8]}.json"))
        timings = dict(prediction.timings, drawing=draw_time)
        message = _status_message(predictor, prediction, len(kept), score_threshold, classes,
                                  timings, duplicates)
        return DemoResult(drawn, detection_rows(kept, names, prediction.input_size), json_path,
                          message, prediction=prediction, timings=timings)


def _upload_bytes(upload: Any) -> Tuple[Any, str]:
    """The encoded image (or array/Pillow image) in an upload, and a path-free name for it."""
    if isinstance(upload, dict):
        name = os.path.basename(upload.get("orig_name") or "") or "The upload"
        url = upload.get("url") or ""
        if upload.get("path"):
            with open(upload["path"], "rb") as f:  # Gradio's own cached copy of the upload
                return f.read(), name
        if url.startswith("data:"):
            try:
                return base64.b64decode(url.split(",", 1)[1], validate=False), name
            except (IndexError, ValueError) as err:
                raise ImageDecodeError(f"{name} is not a valid data URL ({err}).") from err
        raise ImageDecodeError("The upload carried no file; upload it again.")
    if isinstance(upload, np.ndarray):
        if upload.ndim == 2:
            upload = np.repeat(upload[:, :, None], 3, axis=2)
        if upload.ndim != 3 or upload.shape[2] not in (3, 4) or upload.dtype != np.uint8:
            raise ImageDecodeError(f"Expected an RGB image array, got {upload.dtype} "
                                   f"{upload.shape}.")
        from PIL import Image

        return Image.fromarray(upload), "The image"
    if isinstance(upload, (str, os.PathLike)):
        return upload, os.path.basename(os.fspath(upload))
    return upload, "The upload"


def _safe_stem(name: str) -> str:
    stem = os.path.splitext(os.path.basename(name))[0]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._")[:60]
    return stem or "upload"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _status_message(predictor: DemoPredictor, prediction: Prediction, shown: int,
                    score_threshold: float, classes: Optional[Sequence[str]],
                    timings: Mapping[str, float], duplicates: int = 0) -> str:
    total = len(prediction.instances)
    height, width = prediction.input_size
    lines = [
        f"**Model:** {predictor.name} · **Device:** {predictor.device} · "
        f"**Time:** pre-processing {_ms(timings.get('preprocess', 0))}, "
        f"model {_ms(timings.get('model', 0))}, drawing {_ms(timings.get('drawing', 0))}",
    ]
    filters = f"score ≥ {score_threshold:.2f}"
    if classes:
        filters += f", classes {', '.join(classes)}"
    if duplicates:
        filters += (f"; {duplicates} hidden as another class of a higher-scored detection, "
                    f"box IoU ≥ {ONE_LABEL_IOU:g}")
    if shown:
        lines.append(f"**Detections:** {shown} shown of {total} ({filters}); "
                     f"image {width}x{height} px.")
    elif total:
        lines.append(f"**No detections** with {filters} ({total} below it): lower the score "
                     "threshold or clear the class filter.")
    else:
        lines.append("**No detections**: the model found nothing in this image.")
    for note in prediction.notes:
        lines.append(f"Note: {note}" + ("; drawn at that size, the table and the JSON are in "
                                        "the original's pixels." if note.startswith("downscaled")
                                        else "."))
    return "  \n".join(lines)


def build_app(
    demo: DetectionDemo,
    examples: Optional[Sequence[str]] = None,
    score_threshold: float = 0.5,
    title: str = "resbackbones detection demo",
    photos: Optional[Sequence[str]] = None,
) -> "gradio.Blocks":  # noqa: F821
    """Lay out the page and wire its events to ``demo``.

    Args:
        demo: the models and request logic.
        examples: example image paths (default: :func:`make_example_images` for the default
            model's test dataset).
        score_threshold: initial value of the score slider.
        title: page title.
        photos: real photos for a second gallery (default: :func:`make_photo_examples`, empty
            without the ``demo`` extra); ``[]`` shows none.

    Returns:
        A ``gradio.Blocks`` with its queue configured (one request at a time per event,
        at most 16 waiting); call :func:`launch_app` or ``.launch()`` on it.
    """
    gr = require_extra("demo", "gradio", "The web demo")
    pd = require_extra("demo", "pandas", "The web demo's detection table")

    default = demo.model_names[0]
    predictor = demo.predictor(default)
    if examples is None:
        test_sets = predictor.cfg.DATASETS.TEST
        examples = make_example_images(dataset_name=test_sets[0] if len(test_sets) else None)
    if photos is None:
        photos = make_photo_examples()

    def empty_table() -> "pd.DataFrame":
        return pd.DataFrame([], columns=TABLE_HEADERS)

    def to_outputs(result: DemoResult, state: Optional[dict]) -> tuple:
        if result.error:
            gr.Warning(result.message)
        table = pd.DataFrame(result.rows, columns=TABLE_HEADERS) if result.rows else empty_table()
        return result.image, table, result.json_path, result.message, state

    def on_detect(upload, model_name, threshold, classes, parts, one_label=True):
        result = demo.detect(upload, model_name, threshold, classes, parts, one_label)
        state = None
        if result.prediction is not None:
            name = (upload or {}).get("orig_name") if isinstance(upload, dict) else None
            state = {"prediction": result.prediction, "model": model_name,
                     "stem": _safe_stem(name or "upload")}
        return to_outputs(result, state)

    def on_render(state, model_name, threshold, classes, parts, one_label=True):
        if not state or state.get("model") != model_name:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), state
        result = demo.render(state["prediction"], model_name, threshold, classes, parts,
                             state["stem"], one_label)
        return to_outputs(result, state)

    def on_model_change(model_name, progress=gr.Progress(track_tqdm=True)):
        # track_tqdm: a first-use download shows its progress bar on the page too.
        names, failure = demo.select_model(model_name)
        if failure:
            gr.Warning(failure)
            return gr.Dropdown(choices=[], value=[]), failure
        return gr.Dropdown(choices=names, value=[]), gr.skip()

    def on_detect_after_switch(upload, model_name, threshold, classes, parts, one_label=True):
        if not demo.is_built(model_name):  # clear the other model's result, keep the message
            return None, empty_table(), None, gr.skip(), None
        return on_detect(upload, model_name, threshold, classes, parts, one_label)

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"# {title}\nDrop an image (or pick an example). Boxes, labels and instance "
                    "masks are drawn; the table and the COCO-style JSON list the detections "
                    "shown, in the uploaded image's pixels.")
        state = gr.State(None, time_to_live=1800)
        with gr.Row():
            with gr.Column(scale=1):
                image_in = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"],
                                    height=360, elem_id="input-image")
                model = gr.Dropdown(demo.model_names, value=default, label="Model",
                                    visible=len(demo.model_names) > 1, elem_id="model")
                threshold = gr.Slider(0.0, 1.0, value=score_threshold, step=0.01,
                                      label="Score threshold", elem_id="score-threshold")
                classes = gr.Dropdown(predictor.class_names, value=[], multiselect=True,
                                      label="Classes to show (empty: all)", elem_id="classes")
                parts = gr.CheckboxGroup(list(DRAW_PARTS), value=list(DRAW_PARTS), label="Draw",
                                         elem_id="parts")
                one_label = gr.Checkbox(
                    True, label="One label per object",
                    info=f"Hide a detection whose box overlaps a higher-scored one of another "
                         f"class (IoU ≥ {ONE_LABEL_IOU:g}); Detectron2 suppresses within a "
                         "class only.", elem_id="one-label")
                run = gr.Button("Detect", variant="primary", elem_id="detect")
                if photos:
                    gr.Examples(examples=[[p] for p in photos], inputs=[image_in],
                                label="Photos (COCO classes: for the COCO model)")
                if examples:
                    gr.Examples(examples=[[p] for p in examples], inputs=[image_in],
                                label="Synthetic shapes" if photos else "Examples")
            with gr.Column(scale=2):
                image_out = gr.Image(label="Result", type="numpy", format="png", height=520,
                                     interactive=False, elem_id="result-image")
                status = gr.Markdown("Upload an image or pick an example.", elem_id="status")
                table = gr.Dataframe(value=empty_table(), headers=TABLE_HEADERS,
                                     label="Detections", interactive=False, elem_id="table")
                json_file = gr.File(label="Detections (COCO JSON)", interactive=False,
                                    elem_id="json")
        outputs = [image_out, table, json_file, status, state]
        controls = [model, threshold, classes, parts, one_label]
        # preprocess=False: the function gets Gradio's upload record and decodes the bytes
        # itself, so a corrupt file becomes a message on the page, not a failed request.
        gr.on([image_in.change, run.click], on_detect, inputs=[image_in] + controls,
              outputs=outputs, preprocess=False, api_name="detect")
        gr.on([threshold.change, classes.change, parts.change, one_label.change], on_render,
              inputs=[state] + controls, outputs=outputs, api_visibility="private",
              trigger_mode="always_last",
              show_progress="minimal")
        model.change(on_model_change, inputs=[model], outputs=[classes, status],
                     api_visibility="private").then(
            on_detect_after_switch, inputs=[image_in] + controls, outputs=outputs,
            preprocess=False, api_visibility="private")
    app.queue(default_concurrency_limit=1, max_size=16)
    return app


def launch_app(app: "gradio.Blocks", host: str = "127.0.0.1", port: Optional[int] = None,  # noqa
               max_file_size: str = "25mb", block: bool = True) -> str:
    """Serve the page and return its URL.

    Args:
        app: from :func:`build_app`.
        host: interface to listen on; the default serves this machine only (use ``0.0.0.0`` to
            serve a network, behind a firewall: the page has no login).
        port: TCP port (``None``: Gradio picks one from 7860 up).
        max_file_size: upload limit, e.g. ``"25mb"``.
        block: wait until the server stops (Ctrl+C); else return right after starting.

    Returns:
        The local URL.
    """
    app.launch(server_name=host, server_port=port, max_file_size=max_file_size,
               prevent_thread_lock=True, show_error=False, quiet=True, footer_links=["api"])
    url = app.local_url
    print(f"resbackbones demo running at {url}  (Ctrl+C to stop)", flush=True)
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
    return url
