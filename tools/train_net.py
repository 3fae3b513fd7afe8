#!/usr/bin/env python
"""Train or evaluate a resbackbones config with Detectron2 (Detectron2's flags and conventions).

    python tools/train_net.py --num-gpus 8 \
        --config-file configs/COCO-InstanceSegmentation/mask_rcnn_resnet50_FPN_1x.yaml
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS output/model_final.pth
    python tools/train_net.py --config-file CONFIG --dataset mine_train=ann.json:images/ \\
        DATASETS.TRAIN "('mine_train',)"

Without CUDA it runs on the CPU; --num-gpus N then starts N Gloo processes. The same command line
is ``python -m resbackbones train``; --config-file also takes a packaged config name
(``python -m resbackbones configs`` lists them).
"""
from resbackbones.engine.launch import run

if __name__ == "__main__":
    run()
