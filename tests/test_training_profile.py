"""The training profile (benchmark/profile.py) splits a whole iteration into its parts."""
import pytest
import torch

from resbackbones.benchmark.profile import (
    PARTS,
    run_training_profile,
    training_profile_markdown,
)
from resbackbones.benchmark.report import write_section
from resbackbones.benchmark.run import REFERENCE, BenchmarkSettings


@pytest.fixture(scope="module")
def tiny_profile():
    settings = BenchmarkSettings(
        config_file="configs/COCO-InstanceSegmentation/mask_rcnn_resnet18_FPN_1x.yaml",
        height=64, width=96, warmup=1, train_repeats=1, device="cpu",
        include_torchvision=False, opts=["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"])
    return run_training_profile(settings, iterations=1)


def test_parts_add_up_to_the_iteration(tiny_profile):
    assert list(tiny_profile.profiles) == ["resbackbones", REFERENCE]
    for name, profile in tiny_profile.profiles.items():
        assert set(profile.parts) == set(PARTS)
        assert all(seconds >= 0 for seconds in profile.parts.values()), profile.parts
        # The parts partition the profiled iteration: equal up to rounding of timestamps.
        assert sum(profile.parts.values()) == pytest.approx(profile.profiled_step_seconds,
                                                            rel=0.01)
        # Every part of Mask R-CNN was found, forward and backward.
        for part in ("backbone forward", "FPN", "RPN", "ROIAlign", "ROI box head", "mask head",
                     "losses", "backward: backbone forward", "backward: FPN", "backward: RPN",
                     "backward: mask head", "optimizer step"):
            assert profile.parts[part] > 0, (name, part)
        # The profiler's own cost is a fraction of the iteration, not a multiple of it (loose:
        # one timed iteration on a shared machine).
        assert profile.step.median / 3 < profile.profiled_step_seconds < profile.step.median * 3
        assert torch.isfinite(torch.tensor(profile.first_loss))
    # Same weights and seeded sampling: both float32 detectors start from about the same loss.
    # Not exactly: with random weights many RPN scores are near-tied, so rounding-level
    # differences (channels-last, summation order) can change which proposals the ROI heads
    # sample (a fresh-clone CI run under load saw 7.106 vs 7.168).
    ours, reference = tiny_profile.profiles.values()
    assert ours.first_loss == pytest.approx(reference.first_loss, rel=0.05)


def test_markdown_has_the_table(tiny_profile, tmp_path):
    path = tmp_path / "BENCH.md"
    write_section(str(path), "cpu-training-profile", training_profile_markdown(tiny_profile))
    text = path.read_text()
    assert "| part: ms/iteration (share)" in text and "| detectron2 built-in" in text
    for part in PARTS:
        assert f"| {part} " in text
    assert "iteration without profiler (median)" in text and "largest parts" in text
