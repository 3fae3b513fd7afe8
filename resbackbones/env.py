"""``python -m resbackbones.env``: which versions and devices this environment really has.

Users paste this into bug reports; it also tells whether detectron2 came from this project's
installer (pure Python) or from a source build with C++/CUDA ops.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import platform
import sys
from typing import List, Tuple


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _detectron2_rows() -> List[Tuple[str, str]]:
    try:
        detectron2 = importlib.import_module("detectron2")
    except Exception as error:  # report, don't crash: this is a diagnostic tool
        return [("detectron2", f"does not import: {error!r}; run tools/install_detectron2.py")]
    version = getattr(detectron2, "__version__", "?")
    origin = ("resbackbones installer (pure Python)" if "+resbackbones." in version
              else "another build (kept by the installer)")
    has_cpp = importlib.util.find_spec("detectron2._C") is not None
    return [
        ("detectron2", f"{version} at {detectron2.__path__[0]}"),
        ("detectron2 installed by", origin),
        ("detectron2 C++/CUDA ops", "present" if has_cpp else
         "absent (deformable/rotated ops unavailable; ROIAlign/NMS come from torchvision)"),
    ]


def collect_env_rows() -> List[Tuple[str, str]]:
    """Return (name, value) rows describing Python, torch, CUDA, detectron2 and key libraries."""
    import torch

    rows: List[Tuple[str, str]] = [
        ("Python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("CUDA available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        rows.append(("GPUs", f"{torch.cuda.device_count()} x {', '.join(names)}"))
        rows.append(("CUDA (torch build)", str(torch.version.cuda)))
    rows.append(("CPU threads", str(torch.get_num_threads())))
    rows.extend(_detectron2_rows())
    for distribution in ["torchvision", "timm", "fvcore", "pycocotools", "faster-coco-eval",
                         "gradio", "numpy", "pillow", "opencv-python-headless"]:
        rows.append((distribution, _version(distribution)))
    from resbackbones import __version__

    rows.append(("resbackbones", __version__))
    return rows


def format_env_table(rows: List[Tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def main() -> None:
    print(format_env_table(collect_env_rows()))


if __name__ == "__main__":
    main()
