#!/usr/bin/env python
"""Convert a timm or torchvision checkpoint into a Detectron2 checkpoint for one architecture.

    python tools/convert_weights.py --arch resnet50 --input resnet50-0676ba61.pth \\
        --output weights/resnet50_d2.pth

Caffe2 ImageNet files (MSRA ``R-50.pkl``) convert the same way (``--input R-50.pkl``). Whole
detector checkpoints convert between Detectron2's built-in ResNet names and resbackbones names:

    python tools/convert_weights.py --from detectron2 --to resbackbones \
        --input model_final_f10217.pkl --output mask_rcnn_R_50_FPN_3x.safetensors
    python tools/convert_weights.py --from resbackbones --to detectron2 \
        --input output/model_final.pth --output model_final_d2.pth

The output loads with ``MODEL.WEIGHTS`` (keys ``backbone.bottom_up.body.*``). Inputs are read
without running code (safetensors, or torch.load(weights_only=True)); ``.safetensors`` outputs
feed ``MODEL.RESBACKBONE.WEIGHTS``; a plain-pickle ``.pkl`` is written only with ``--format pkl``.
The same command line is ``python -m resbackbones convert-weights``.
"""
import sys

from resbackbones.checkpoint.convert import main

if __name__ == "__main__":
    sys.exit(main())
