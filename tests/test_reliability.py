"""Faults provoked for real: kills during checkpoint writes, corrupted images during training."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resbackbones.checkpoint.atomic import atomic_write
from resbackbones.data.robust_mapper import SkipCorruptedImages


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.pth"
    target.write_bytes(b"previous checkpoint")

    def failing_write(file):
        file.write(b"half of the new one")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(str(target), failing_write)
    assert target.read_bytes() == b"previous checkpoint"
    assert os.listdir(tmp_path) == ["model.pth"]


KILLED_SAVER = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from detectron2.checkpoint import DetectionCheckpointer
    from resbackbones.checkpoint.atomic import AtomicSaveMixin

    class Checkpointer(AtomicSaveMixin, DetectionCheckpointer):
        pass

    small = nn.Linear(4, 4)
    Checkpointer(small, save_dir=sys.argv[1]).save("model_0000000", iteration=0)
    print("first saved", flush=True)
    big = nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(24)])  # ~1.6 GB to write
    Checkpointer(big, save_dir=sys.argv[1]).save("model_0000100", iteration=100)
    print("second saved", flush=True)
""")


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_leaves_previous_checkpoint_usable(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    process = subprocess.Popen([sys.executable, "-c", KILLED_SAVER, str(tmp_path)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "first saved"
    deadline = time.time() + 120
    while not any(name.startswith(".model_0000100") for name in os.listdir(tmp_path)):
        assert time.time() < deadline and process.poll() is None, "second save never started"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert not (tmp_path / "model_0000100.pth").exists()
    model = torch.nn.Linear(4, 4)
    checkpointer = DetectionCheckpointer(model, save_dir=str(tmp_path))
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 0


def _mapper_inputs(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper

    good = tmp_path / "good.png"
    Image.fromarray(np.full((32, 48, 3), 100, np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    not_an_image = tmp_path / "random.jpg"
    not_an_image.write_bytes(np.random.default_rng(0).bytes(500))
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (32,)
    mapper = DatasetMapper(cfg, is_train=True)
    records = [{"file_name": str(path), "height": 32, "width": 48, "image_id": index,
                "annotations": []} for index, path in enumerate([good, truncated, not_an_image])]
    return mapper, records


def test_corrupted_images_are_skipped_and_counted(tmp_path):
    mapper, records = _mapper_inputs(tmp_path)
    robust = SkipCorruptedImages(mapper)
    assert robust(dict(records[0]))["image"].shape[0] == 3
    assert robust(dict(records[1])) is None and robust(dict(records[2])) is None
    assert robust.skipped == 2
    wrong_size = dict(records[0], height=10)
    assert robust(wrong_size) is None and robust.skipped == 3


def test_data_loader_goes_on_past_corrupted_images(tmp_path):
    from detectron2.data.common import MapDataset

    mapper, records = _mapper_inputs(tmp_path)
    dataset = MapDataset(records, SkipCorruptedImages(mapper))
    # Whatever index is asked, the bad records are replaced by the good one.
    assert [dataset[index]["image_id"] for index in range(3)] == [0, 0, 0]


def test_other_mapper_errors_still_raise():
    def buggy_mapper(record):
        raise KeyError("annotations")

    with pytest.raises(KeyError):
        SkipCorruptedImages(buggy_mapper)({"file_name": "x.png"})
