"""Deployment: export detectors to TorchScript/ONNX (:mod:`resbackbones.deploy.export`, needs
PyTorch and Detectron2) and run ONNX exports with numpy, Pillow and onnxruntime only
(:mod:`resbackbones.deploy.onnx_runner`).

Importing this package imports neither Detectron2 nor PyTorch, so that the runner works on a
machine that has neither.
"""
from resbackbones.deploy.onnx_runner import Detections, ModelMismatchError, OnnxDetector

__all__ = ["Detections", "ModelMismatchError", "OnnxDetector"]
