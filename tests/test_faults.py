"""Faults injected into real runs: what the user sees and what is kept.

- the disk fills up while a checkpoint is written (ENOSPC from inside the write);
- the last checkpoint is truncated and the run is resumed;
- SIGTERM arrives while evaluation writes its results files;
- data set images disappear while training.

Each test trains or evaluates ResNet-18 Mask R-CNN (masks off) on a 2-image synthetic set of
64x80 images for a few iterations, in this process unless a signal has to kill the process.
"""
import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from detectron2.engine import HookBase
from torch import nn

from resbackbones.checkpoint import atomic
from resbackbones.checkpoint.atomic import DiskFullError
from resbackbones.checkpoint.checkpointer import ResBackboneCheckpointer, UnreadableCheckpointError
from resbackbones.data.robust_mapper import DatasetFolderMissingError
from resbackbones.engine import Trainer
from resbackbones.engine.launch import build_argument_parser, setup_cfg

REPO = Path(__file__).resolve().parents[1]
QUICK = "configs/quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml"
TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "80",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "80", "MODEL.MASK_ON", "False",
        "DATASETS.TRAIN", "('faults_train',)", "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001", "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "2", "MODEL.DEVICE", "cpu"]


@pytest.fixture
def dataset(tmp_path):
    """(--dataset flags, train image folder, val json, val folder) of a fresh 2+2-image set."""
    from resbackbones.data import SyntheticSpec, generate_synthetic_coco, synthetic_paths

    root = str(tmp_path / "data")
    generate_synthetic_coco(root, SyntheticSpec(num_train=2, num_val=2, seed=5, height=64,
                                                width=80))
    flags = []
    for split in ("train", "val"):
        json_file, image_root = synthetic_paths(root, split)
        flags += ["--dataset", f"faults_{split}={json_file}:{image_root}"]
    return flags, Path(synthetic_paths(root, "train")[1])


def _trainer(flags, output_dir, *opts, resume=False, hooks=()):
    args = build_argument_parser().parse_args(
        ["--config-file", QUICK, *flags, *TINY, *opts, "OUTPUT_DIR", str(output_dir)])
    trainer = Trainer(setup_cfg(args))
    trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=resume)
    return trainer


def _iteration(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["iteration"]


def _temporary_files(folder) -> list:
    return sorted(p.name for p in Path(folder).rglob(".*.tmp-*"))


# --- (a) the disk fills up during a checkpoint save -----------------------------------------

class _FillsUp:
    """A file whose writes fail with ENOSPC once ``budget`` bytes are written (some reach the
    file first, as on a real disk that fills mid-write)."""

    def __init__(self, file, budget: int):
        self._file, self._budget = file, budget

    def write(self, data) -> int:
        room = self._budget - self._file.tell()
        if len(data) > room:
            self._file.write(bytes(data)[:max(room, 0)])
            self._file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._file.write(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._file.close()


def _fill_disk_when_writing(monkeypatch, name_part: str, budget: int = 4096) -> None:
    """From now on, the atomic writer's file for a target whose name contains ``name_part``
    runs out of space after ``budget`` bytes."""
    real_open = open

    def opener(path, mode="r", **kwargs):
        file = real_open(path, mode, **kwargs)
        return _FillsUp(file, budget) if name_part in os.path.basename(path) else file

    monkeypatch.setattr(atomic, "open", opener, raising=False)


@pytest.mark.slow
def test_disk_full_during_a_training_checkpoint_keeps_the_previous_one(dataset, tmp_path,
                                                                      monkeypatch):
    flags, _ = dataset
    _fill_disk_when_writing(monkeypatch, "model_0000003")
    trainer = _trainer(flags, tmp_path, "SOLVER.MAX_ITER", "6")
    with pytest.raises(DiskFullError) as error:
        trainer.train()
    message = str(error.value)
    previous = tmp_path / "model_0000001.pth"
    assert f"Checkpoint {tmp_path / 'model_0000003.pth'} not saved" in message, message
    assert "No space left on the disk" in message and "free in" in message
    assert f"The previous checkpoint {previous} is intact" in message
    assert "--resume" in message
    # Kept: the previous checkpoint, named by last_checkpoint, loadable; no partial file left.
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_0000003.pth").exists()
    assert _temporary_files(tmp_path) == []
    assert _iteration(previous) == 1
    monkeypatch.undo()
    resumed = _trainer(flags, tmp_path, "SOLVER.MAX_ITER", "6", resume=True)
    assert resumed.start_iter == 2


def test_disk_full_while_tagging_last_checkpoint_says_what_resume_uses(tmp_path, monkeypatch):
    checkpointer = ResBackboneCheckpointer(nn.Linear(8, 8), save_dir=str(tmp_path))
    checkpointer.save("model_0000000", iteration=0)
    _fill_disk_when_writing(monkeypatch, "last_checkpoint", budget=0)
    with pytest.raises(DiskFullError) as error:
        checkpointer.save("model_0000001", iteration=1)
    assert "last_checkpoint could not be updated" in str(error.value)
    assert f"still names {tmp_path / 'model_0000000.pth'}" in str(error.value)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000000.pth"
    assert _iteration(tmp_path / "model_0000001.pth") == 1  # complete, just not tagged
    assert _temporary_files(tmp_path) == []


def test_disk_full_before_any_checkpoint_says_none_was_kept(tmp_path, monkeypatch):
    _fill_disk_when_writing(monkeypatch, "model_")
    checkpointer = ResBackboneCheckpointer(nn.Linear(64, 64), save_dir=str(tmp_path))
    with pytest.raises(DiskFullError, match="No earlier checkpoint was written in this folder"):
        checkpointer.save("model_0000000", iteration=0)
    assert os.listdir(tmp_path) == []


# --- (b) a truncated last checkpoint on --resume --------------------------------------------

def _truncate(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path.read_bytes()


@pytest.mark.slow
def test_resume_falls_back_from_a_truncated_last_checkpoint(dataset, tmp_path):
    flags, _ = dataset
    _trainer(flags, tmp_path, "SOLVER.MAX_ITER", "4").train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    bad, good = tmp_path / "model_final.pth", tmp_path / "model_0000003.pth"
    truncated = _truncate(bad)
    resumed = _trainer(flags, tmp_path, "SOLVER.MAX_ITER", "6", resume=True)
    assert resumed.start_iter == 4  # model_0000003.pth holds iteration 3
    log = (tmp_path / "log.txt").read_text()
    warning = [line for line in log.splitlines() if "Cannot resume from" in line]
    assert warning and "WARNING" in warning[0], log[-3000:]
    assert f"Cannot resume from {bad} (named in last_checkpoint)" in warning[0]
    assert f"Resuming from {good} instead" in warning[0]
    assert "incomplete or damaged" in warning[0]
    assert bad.read_bytes() == truncated  # the bad file is never deleted
    resumed.train()
    assert "Starting training from iteration 4" in (tmp_path / "log.txt").read_text()
    records = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert [r["iteration"] for r in records if "total_loss" in r][-1] == 5
    assert _iteration(bad) == 5  # rewritten whole at the end


def test_resume_skips_every_unreadable_checkpoint_and_refuses_when_none_reads(tmp_path):
    model = nn.Linear(8, 8)
    checkpointer = ResBackboneCheckpointer(model, save_dir=str(tmp_path))
    for iteration in (1, 3, 5):
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    _truncate(tmp_path / "model_0000005.pth")
    (tmp_path / "model_0000003.pth").write_bytes(b"")
    assert ResBackboneCheckpointer(model, save_dir=str(tmp_path)).resume_or_load(
        "", resume=True)["iteration"] == 1
    _truncate(tmp_path / "model_0000001.pth")
    with pytest.raises(UnreadableCheckpointError) as error:
        ResBackboneCheckpointer(model, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    for name in ("model_0000005.pth", "model_0000003.pth", "model_0000001.pth"):
        assert str(tmp_path / name) in str(error.value)
    assert "remove" in str(error.value) and "last_checkpoint" in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth",
                                            "model_0000003.pth", "model_0000005.pth"]


# --- (c) SIGTERM while evaluation writes its results ----------------------------------------

# Runs tools/train_net.py's run() with json.dump(s) replaced: a serialisation called directly by
# the function named by argv[1] sends SIGTERM to this process (default action: die at once, no
# clean-up), i.e. while that function writes its results file.
SIGTERM_WHILE_WRITING = textwrap.dedent("""
    import json, os, signal, sys, time

    def killing(serialise):
        def serialise_or_die(*args, **kwargs):
            if sys._getframe(1).f_code.co_name == sys.argv[1]:
                print("sending SIGTERM", flush=True)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(60)
            return serialise(*args, **kwargs)
        return serialise_or_die

    json.dumps, json.dump = killing(json.dumps), killing(json.dump)
    from resbackbones.engine.launch import run
    run(sys.argv[2:])
""")
PREVIOUS = {"inference/coco_instances_results.json": [{"image_id": 0, "previous": True}],
            "eval_results.json": {"bbox": {"AP": 12.5}, "previous": True}}


@pytest.mark.slow
@pytest.mark.parametrize("writer, being_written", [
    ("_eval_predictions", "inference/coco_instances_results.json"),
    ("write_run_report", "eval_results.json"),
])
def test_sigterm_while_writing_results_leaves_no_half_written_file(dataset, tmp_path, writer,
                                                                   being_written):
    flags, _ = dataset
    for relative, content in PREVIOUS.items():  # the results of an earlier evaluation
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(json.dumps(content))
    command = [sys.executable, "-c", SIGTERM_WHILE_WRITING, writer, "--eval-only",
               "--config-file", QUICK, *flags, *TINY, "DATASETS.TEST", "('faults_val',)",
               "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "OUTPUT_DIR", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == -signal.SIGTERM, result.stdout[-2000:] + result.stderr[-3000:]
    assert "sending SIGTERM" in result.stdout
    # The file being written when the signal came is the previous, complete one.
    assert json.loads((tmp_path / being_written).read_text()) == PREVIOUS[being_written]
    # Every other results file is complete JSON (an earlier or a new one), never a fragment.
    for path in [tmp_path / "eval_results.json",
                 tmp_path / "inference" / "coco_instances_results.json"]:
        json.loads(path.read_text())
    # What the kill leaves besides: the hidden temporary file nothing reads.
    leftovers = _temporary_files(tmp_path)
    assert all(name.startswith(f".{Path(being_written).name}.tmp-") for name in leftovers), \
        leftovers


def test_results_files_are_written_atomically_by_the_evaluator(tmp_path, monkeypatch):
    """Without a kill: the evaluator's write goes through a temporary file that is renamed."""
    from detectron2.evaluation import coco_evaluation

    from resbackbones.engine.evaluation import _atomic_result_files

    target = tmp_path / "coco_instances_results.json"
    target.write_text("[]")
    with _atomic_result_files():
        with coco_evaluation.PathManager.open(str(target), "w") as file:
            file.write('[{"image_id": 1}]')
            assert target.read_text() == "[]"  # not replaced before the file is complete
        assert coco_evaluation.PathManager.isfile(str(target))  # other calls: PathManager's
    assert json.loads(target.read_text()) == [{"image_id": 1}]
    assert _temporary_files(tmp_path) == []


# --- (d) data set images disappear while training -------------------------------------------

class _Messages(logging.Handler):
    """The WARNING messages of the logger it is added to."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


class _RemoveAfter(HookBase):
    """After iteration ``iteration``, run ``action`` (delete a file, move a folder)."""

    def __init__(self, iteration, action):
        self.iteration, self.action = iteration, action

    def after_step(self):
        if self.trainer.iter == self.iteration:
            self.action()


@pytest.mark.slow
def test_images_that_disappear_while_training_are_named(dataset, tmp_path):
    flags, image_root = dataset
    images = sorted(image_root.iterdir())
    assert len(images) == 2  # both are read in every iteration (batch of 2)
    moved = tmp_path / "moved_away"
    trainer = _trainer(flags, tmp_path / "out", "SOLVER.MAX_ITER", "8", hooks=[
        _RemoveAfter(1, images[0].unlink),  # one file deleted: skipped, named, training goes on
        _RemoveAfter(3, lambda: image_root.rename(moved)),  # the whole folder gone: stop
    ])
    # The mapper's own logger (whatever another test did to the "resbackbones" logger's
    # propagation): a plain run prints these warnings on stderr.
    warnings = _Messages()
    mapper_log = logging.getLogger("resbackbones.data.robust_mapper")
    mapper_log.addHandler(warnings)
    try:
        with pytest.raises(DatasetFolderMissingError) as error:
            trainer.train()
    finally:
        mapper_log.removeHandler(warnings)
    message = str(error.value)
    # The next image read names the folder (the deleted one may come first: both are sampled).
    assert re.search(rf"Image {image_root}/00000[01]\.png is gone, and so is its folder "
                     rf"{image_root}: the data set was removed, moved or unmounted", message), \
        message
    assert "--resume" in message
    assert any(line.startswith(f"Skipping image {images[0]}: the file no longer exists")
               for line in warnings.lines), warnings.lines
    # Training went on past the deleted file, up to the folder's removal; its checkpoints stay.
    assert trainer.iter == 4
    assert _iteration(tmp_path / "out" / "model_0000003.pth") == 3
    assert (tmp_path / "out" / "last_checkpoint").read_text() == "model_0000003.pth"


def test_consecutive_unreadable_images_stop_with_the_last_file_named(tmp_path):
    from resbackbones.data.robust_mapper import SkipCorruptedImages, UnreadableDatasetError

    def reader(record):
        with open(record["file_name"], "rb") as file:
            return {"bytes": file.read()}

    images = []
    for index in range(4):
        images.append(tmp_path / f"{index}.png")
        images[-1].write_bytes(b"pixels")
    mapper = SkipCorruptedImages(reader, max_consecutive_failures=3)
    images[0].unlink()
    images[1].unlink()
    assert mapper({"file_name": str(images[0])}) is None
    assert mapper({"file_name": str(images[2])}) == {"bytes": b"pixels"}  # a good one: reset
    assert mapper({"file_name": str(images[1])}) is None
    images[2].unlink()
    images[3].unlink()
    assert mapper({"file_name": str(images[2])}) is None
    with pytest.raises(UnreadableDatasetError) as error:
        mapper({"file_name": str(images[3])})
    assert f"3 images in a row could not be read, the last {images[3]}" in str(error.value)
    assert mapper.skipped == 4
    with pytest.raises(ValueError, match="max_consecutive_failures 0 is invalid"):
        SkipCorruptedImages(reader, max_consecutive_failures=0)
