"""Suite-wide settings.

CPU kernel choices (``resbackbones.modeling.kernel_choice``) are measured per machine and cached
in the user's cache directory; the suite must neither depend on what this machine measured nor
write there. So every test (and every process a test starts) uses the fixed rules;
tests/test_kernel_choice.py switches measuring on with a temporary cache directory.
"""
import os

os.environ["RESBACKBONES_CPU_TUNING"] = "off"


# The slow tests write checkpoints, exported models and run folders (several GiB in all before
# passed tests' folders are removed; `tmp_path_retention_policy` in setup.cfg). A full disk shows
# up as dozens of unrelated-looking errors, so say how much room there is, and stop early when a
# run cannot fit.
MIN_FREE_GIB = 2.0


def _free_gib(path: str) -> float:
    import shutil

    return shutil.disk_usage(path).free / 2**30


def pytest_report_header(config):
    import tempfile

    folder = tempfile.gettempdir()
    return f"temporary folder: {folder} ({_free_gib(folder):.1f} GiB free)"


def pytest_sessionstart(session):
    import tempfile

    import pytest

    folder = tempfile.gettempdir()
    free = _free_gib(folder)
    if free < MIN_FREE_GIB:
        pytest.exit(
            f"only {free:.1f} GiB free in {folder}; the suite needs at least {MIN_FREE_GIB} GiB "
            "there (set TMPDIR to a folder on a larger disk, or free space)",
            returncode=1,
        )
