#!/usr/bin/env python
"""Install Detectron2 into the current Python environment, idempotently.

Detectron2 is not on PyPI. This script:

1. keeps a Detectron2 that already imports (for example one built from source with CUDA ops),
   and reports its version and location;
2. otherwise downloads, from the index pip is configured with, the sdist that PyPI carries as
   ``pb1-detectron2==0.6`` (upstream v0.6's Python code without its C++ sources), verifies its
   sha256, applies the source rewrites listed in
   :data:`SOURCE_REWRITES` (backports of what upstream fixed after v0.6, each checked to match
   exactly where expected), builds a pure-Python wheel named ``detectron2`` with version
   ``0.6+resbackbones.N`` and installs it with pip.

It uses only the standard library, because it runs before the package's own dependencies are
guaranteed to be importable. ``--list-rewrites`` prints the rewrite table used in the README.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

SDIST_REQUIREMENT = "pb1-detectron2==0.6"
SDIST_FILENAME = "pb1-detectron2-0.6.tar.gz"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
UPSTREAM_VERSION = "0.6"
# Bump whenever SOURCE_REWRITES or the wheel metadata change: an older build is then replaced.
PATCH_LEVEL = 4
WHEEL_VERSION = f"{UPSTREAM_VERSION}+resbackbones.{PATCH_LEVEL}"
LOCAL_VERSION_PATTERN = re.compile(r"^0\.6\+resbackbones\.(\d+)$")

# Runtime requirements of Detectron2 v0.6 (its setup.py, minus build and lint tools).
WHEEL_REQUIREMENTS = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
    "packaging",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "detectron2"


@dataclass(frozen=True)
class SourceRewrite:
    """One textual backport applied to a file of the ``detectron2`` package.

    ``old`` must occur exactly ``count`` times (as a regular expression when ``regex``), so a
    changed upstream source fails loudly instead of being half-patched.
    """

    path: str
    old: str
    new: str
    count: int
    reason: str
    regex: bool = False

    def apply(self, text: str) -> str:
        pattern = self.old if self.regex else re.escape(self.old)
        found = len(re.findall(pattern, text))
        if found != self.count:
            raise RewriteMismatch(
                f"detectron2/{self.path}: expected {self.count} occurrence(s) of {self.old!r}, "
                f"found {found}. The sdist differs from the one this installer was written for; "
                f"refusing to half-patch it."
            )
        replacement = self.new if self.regex else self.new.replace("\\", "\\\\")
        return re.sub(pattern, replacement, text)


class RewriteMismatch(RuntimeError):
    """A source rewrite did not match the expected number of places."""


_LAZY_C = "from detectron2._C_lazy import _C"
_NUMPY_ALIAS = r"\bnp\.(bool|int|float|str)\b(?!_)"
_REASON_C = "imports the C++ extension at module level; load it on first use, clear error if absent"
_REASON_NUMPY = "NumPy 1.24/2.0 removed np.bool/np.int/np.float/np.str; use the builtins"

SOURCE_REWRITES: List[SourceRewrite] = [
    SourceRewrite("__init__.py", '__version__ = "0.6"', f'__version__ = "{WHEEL_VERSION}"', 1,
                  "report which build is installed"),
    SourceRewrite("layers/deform_conv.py", "from detectron2 import _C", _LAZY_C, 1, _REASON_C),
    SourceRewrite("layers/rotated_boxes.py", "from detectron2 import _C", _LAZY_C, 1, _REASON_C),
    SourceRewrite("layers/roi_align_rotated.py", "from detectron2 import _C", _LAZY_C, 1,
                  _REASON_C),
    SourceRewrite("evaluation/fast_eval_api.py", "from detectron2 import _C", _LAZY_C, 1,
                  _REASON_C),
    SourceRewrite("layers/nms.py", "return torch.ops.detectron2.nms_rotated(",
                  'from detectron2._C_lazy import cpp_torch_op\n\n'
                  '    return cpp_torch_op("nms_rotated")(', 1,
                  "calls a C++-registered op directly; go through the lazy loader"),
    SourceRewrite("structures/masks.py", _NUMPY_ALIAS, r"\1", 3, _REASON_NUMPY, regex=True),
    SourceRewrite("data/build.py", _NUMPY_ALIAS, r"\1", 2, _REASON_NUMPY, regex=True),
    SourceRewrite("data/datasets/pascal_voc.py", _NUMPY_ALIAS, r"\1", 1, _REASON_NUMPY,
                  regex=True),
    SourceRewrite("evaluation/pascal_voc_evaluation.py", _NUMPY_ALIAS, r"\1", 2, _REASON_NUMPY,
                  regex=True),
    SourceRewrite("evaluation/sem_seg_evaluation.py", _NUMPY_ALIAS, r"\1", 7, _REASON_NUMPY,
                  regex=True),
    SourceRewrite("utils/visualizer.py", _NUMPY_ALIAS, r"\1", 3, _REASON_NUMPY, regex=True),
    SourceRewrite("utils/video_visualizer.py", _NUMPY_ALIAS, r"\1", 1, _REASON_NUMPY,
                  regex=True),
    SourceRewrite("layers/mask_ops.py", "np.array(mask, copy=False)", "np.asarray(mask)", 1,
                  "NumPy 2 raises on copy=False when a copy is needed (PIL image to array)"),
    SourceRewrite("data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR",
                  1, "Pillow 10 removed Image.LINEAR (an alias of BILINEAR)"),
    SourceRewrite("model_zoo/model_zoo.py", "import pkg_resources\n", "import importlib.resources\n",
                  1, "setuptools 81 removed pkg_resources; use importlib.resources"),
    SourceRewrite("model_zoo/model_zoo.py",
                  'cfg_file = pkg_resources.resource_filename(\n'
                  '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
                  '    )',
                  'cfg_file = str(\n'
                  '        importlib.resources.files("detectron2.model_zoo").joinpath(\n'
                  '            "configs", config_path\n'
                  '        )\n'
                  '    )', 1, "setuptools 81 removed pkg_resources; use importlib.resources"),
    SourceRewrite("engine/launch.py",
                  '    assert torch.cuda.is_available(), '
                  '"cuda is not available. Please check your installation."\n', "", 1,
                  "distributed launch asserted CUDA; machines without GPUs use Gloo instead"),
    SourceRewrite("engine/launch.py", 'backend="NCCL",', "backend=backend,", 1,
                  "NCCL needs GPUs; Gloo runs distributed training on CPU"),
    SourceRewrite("engine/launch.py",
                  "    timeout=DEFAULT_TIMEOUT,\n):\n    \"\"\"\n    Launch multi-gpu",
                  "    timeout=DEFAULT_TIMEOUT,\n    backend=None,\n):\n    \"\"\"\n"
                  "    Launch multi-gpu", 1,
                  "the caller chooses the backend from its device: a CPU run on a GPU machine "
                  "needs Gloo (NCCL crashes in DDP on CPU tensors)"),
    SourceRewrite("engine/launch.py", "        args (tuple): arguments passed to main_func\n",
                  "        args (tuple): arguments passed to main_func\n"
                  "        backend (str): process-group backend; default NCCL when CUDA is "
                  "available, else Gloo\n", 1, "document the backend argument"),
    SourceRewrite("engine/launch.py", "                timeout,\n            ),",
                  "                timeout,\n                backend,\n            ),", 1,
                  "pass the chosen backend to the spawned workers"),
    SourceRewrite("engine/launch.py",
                  "    timeout=DEFAULT_TIMEOUT,\n):\n    global_rank",
                  "    timeout=DEFAULT_TIMEOUT,\n    backend=None,\n):\n"
                  "    backend = backend or (\"NCCL\" if torch.cuda.is_available() else \"GLOO\")\n"
                  "    global_rank", 1, "the worker's backend: the caller's, else NCCL with CUDA"),
    SourceRewrite("engine/launch.py",
                  "    assert num_gpus_per_machine <= torch.cuda.device_count()\n"
                  "    torch.cuda.set_device(local_rank)\n",
                  "    if str(backend).upper() == \"NCCL\":\n"
                  "        assert num_gpus_per_machine <= torch.cuda.device_count()\n"
                  "        torch.cuda.set_device(local_rank)\n", 1,
                  "selecting a CUDA device only makes sense for a run on CUDA (NCCL)"),
    SourceRewrite("data/common.py", "self._rng.sample(self._fallback_candidates, k=1)",
                  "self._rng.sample(sorted(self._fallback_candidates), k=1)", 1,
                  "Python 3.11 removed random.sample() from sets: a skipped sample (mapper "
                  "returned None) crashed the data loader"),
    SourceRewrite("engine/defaults.py", 'if "device_ids" not in kwargs:',
                  'if "device_ids" not in kwargs and any(\n'
                  '        p.is_cuda for p in model.parameters()\n'
                  '    ):', 1,
                  "DDP refuses device_ids for a CPU module"),
    SourceRewrite("export/__init__.py", "from .api import *\n",
                  "try:\n"
                  "    from .api import *\n"
                  "except ModuleNotFoundError as _missing:\n"
                  "    # Only the Caffe2 exporter needs caffe2; tracing and scripting do not.\n"
                  "    if not (_missing.name or \"\").startswith(\"caffe2\"):\n"
                  "        raise\n", 1,
                  "imports Caffe2's protos, which current PyTorch lacks; TracingAdapter and "
                  "scripting_with_instances do not need them (upstream PR 4291)"),
]

# Written into the package: loads ``detectron2._C`` on first use instead of at import time.
LAZY_EXTENSION_MODULE = '''\
"""Lazy access to detectron2's compiled extension (written by resbackbones' installer).

This detectron2 was built from Python sources only. Everything that Faster/Mask R-CNN and
RetinaNet need runs without the extension (torchvision provides ROIAlign and NMS); the ops that
exist only in C++/CUDA raise a clear error when they are first used.
"""
import importlib

_BUILD_HINT = (
    "This detectron2 ({version}) was installed by resbackbones as pure Python, without "
    "detectron2's compiled C++/CUDA extension (detectron2._C). To use '{op}', build detectron2 "
    "from source in this environment (upstream INSTALL.md); resbackbones' installer keeps a "
    "detectron2 that already imports."
)
_OP_HINTS = {
    "COCOeval": " For COCO evaluation, pass use_fast_impl=False to COCOEvaluator (pycocotools) "
    "or use faster-coco-eval.",
}


def _load_extension(op_name):
    try:
        return importlib.import_module("detectron2._C")
    except ImportError as error:
        from detectron2 import __version__

        hint = "".join(text for prefix, text in _OP_HINTS.items() if op_name.startswith(prefix))
        raise RuntimeError(
            _BUILD_HINT.format(version=__version__, op=op_name) + hint
        ) from error


class _LazyExtension:
    """Stands in for ``detectron2._C``; attribute access loads the real extension."""

    def __getattr__(self, op_name):
        if op_name.startswith("__"):
            raise AttributeError(op_name)
        return getattr(_load_extension(op_name), op_name)


def cpp_torch_op(op_name):
    """Return ``torch.ops.detectron2.<op_name>``, which only exists once ``_C`` is loaded."""
    _load_extension(op_name)
    import torch

    return getattr(torch.ops.detectron2, op_name)


_C = _LazyExtension()
'''

PYPROJECT_TEMPLATE = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "detectron2"
version = "{version}"
description = "Detectron2 v0.6 Python sources with backports for current PyTorch/NumPy/Pillow, \
built by resbackbones (no C++ extension)"
license = "Apache-2.0"
license-files = ["LICENSE"]
requires-python = ">=3.8"
dependencies = {requirements}

[tool.setuptools.packages.find]
include = ["detectron2*"]

[tool.setuptools.package-data]
"detectron2.model_zoo" = ["configs/*", "configs/**/*"]
"""


def log(message: str) -> None:
    print(f"[install_detectron2] {message}", flush=True)


def probe_detectron2(python: str) -> Optional[dict]:
    """Ask ``python`` whether detectron2 imports; returns version, location and _C status."""
    script = (
        "import json, importlib.util\n"
        "try:\n"
        "    import detectron2\n"
        "except Exception as e:\n"
        "    print(json.dumps({'error': repr(e)})); raise SystemExit\n"
        "try:\n"
        "    from importlib.metadata import version; dist = version('detectron2')\n"
        "except Exception:\n"
        "    dist = None\n"
        "print(json.dumps({'version': detectron2.__version__, 'dist_version': dist,\n"
        "    'location': detectron2.__path__[0],\n"
        "    'has_cpp_ops': importlib.util.find_spec('detectron2._C') is not None}))\n"
    )
    result = subprocess.run([python, "-c", script], capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    info = json.loads(result.stdout.strip().splitlines()[-1])
    return None if "error" in info else info


def own_patch_level(info: dict) -> Optional[int]:
    """The PATCH_LEVEL of a detectron2 built by this script, or None for any other build."""
    match = LOCAL_VERSION_PATTERN.match(str(info.get("dist_version") or info.get("version")))
    return int(match.group(1)) if match else None


def decide_action(info: Optional[dict], force: bool = False) -> str:
    """What to do given the probe of the current detectron2.

    Returns "install" (none imports, or ``force``), "keep" (someone else's build, for example one
    compiled with CUDA ops), "up-to-date" (this script's current build) or "upgrade" (an older
    build of this script, whose rewrites are out of date).
    """
    if info is None or force:
        return "install"
    level = own_patch_level(info)
    if level is None:
        return "keep"
    return "up-to-date" if level >= PATCH_LEVEL else "upgrade"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _index_url(python: str) -> str:
    """The package index pip is configured to use (PIP_INDEX_URL, pip config, or PyPI)."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    result = subprocess.run([python, "-m", "pip", "config", "get", "global.index-url"],
                            capture_output=True, text=True)
    configured = result.stdout.strip() if result.returncode == 0 else ""
    return configured if configured.startswith("http") else "https://pypi.org/simple"


def _sdist_url(index_url: str) -> str:
    """Find the sdist's download URL in the index's project page (PEP 691 JSON, or HTML)."""
    page = f"{index_url.rstrip('/')}/{SDIST_REQUIREMENT.split('==')[0]}/"
    request = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=120) as response:
        body = response.read().decode()
        is_json = "json" in response.headers.get("Content-Type", "")
    if is_json:
        urls = [f["url"] for f in json.loads(body)["files"] if f["filename"] == SDIST_FILENAME]
    else:
        urls = [html.unescape(u) for u in re.findall(r'href="([^"]+)"', body)
                if SDIST_FILENAME in u]
    if not urls:
        raise RuntimeError(f"{SDIST_FILENAME} is not listed on {page}.")
    return urllib.parse.urljoin(page, urls[0].split("#")[0])


def download_sdist(python: str, cache_dir: Path) -> Path:
    """Download the sdist (once) from the configured index and verify its checksum.

    Not through ``pip download``: pip prepares the sdist's metadata to do so, and current pip
    refuses this one ("cannot declare direct URL dependencies": its ``all`` extra names a
    GitHub URL), besides needing torch to run its setup.py.
    """
    sdist = cache_dir / SDIST_FILENAME
    if not sdist.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        url = _sdist_url(_index_url(python))
        log(f"downloading {url}")
        partial = sdist.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=300) as response, open(partial, "wb") as file:
            shutil.copyfileobj(response, file)
        partial.replace(sdist)
    actual = sha256_of(sdist)
    if actual != SDIST_SHA256:
        bad = sdist.with_suffix(".bad")
        sdist.replace(bad)
        raise RuntimeError(
            f"{sdist}: sha256 {actual} does not match the expected {SDIST_SHA256}; moved it to "
            f"{bad}. Delete it and run again, or check your package index."
        )
    log(f"verified sha256 of {sdist.name}")
    return sdist


def extract_package(sdist: Path, destination: Path) -> Path:
    """Extract only the ``detectron2/`` package and LICENSE of the sdist into ``destination``."""
    prefix = "pb1-detectron2-0.6/"
    with tarfile.open(sdist) as archive:
        members = []
        for member in archive.getmembers():
            if not member.name.startswith(prefix):
                continue
            relative = member.name[len(prefix):]
            if relative == "LICENSE" or relative.startswith("detectron2/"):
                if not (member.isfile() or member.isdir()):
                    continue
                member.name = relative
                members.append(member)
        archive.extractall(destination, members=members, filter="data")
    package = destination / "detectron2"
    if not (package / "__init__.py").exists():
        raise RuntimeError(f"{sdist} has no detectron2/__init__.py; is it the right file?")
    return package


def apply_rewrites(package: Path, rewrites: Sequence[SourceRewrite] = SOURCE_REWRITES) -> None:
    """Apply every rewrite, then write the lazy extension loader; fails on the first mismatch."""
    texts = {}
    for rewrite in rewrites:
        path = package / rewrite.path
        if not path.exists():
            raise RewriteMismatch(f"detectron2/{rewrite.path}: file not found in the sdist")
        texts[rewrite.path] = rewrite.apply(texts.get(rewrite.path) or path.read_text())
    for relative, text in texts.items():
        (package / relative).write_text(text)
    (package / "_C_lazy.py").write_text(LAZY_EXTENSION_MODULE)
    log(f"applied {len(rewrites)} source rewrites to {len(texts)} files")


def build_wheel(python: str, source_root: Path, wheel_dir: Path) -> Path:
    """Build a pure-Python ``detectron2`` wheel from the patched sources."""
    requirements = json.dumps(WHEEL_REQUIREMENTS)
    (source_root / "pyproject.toml").write_text(
        PYPROJECT_TEMPLATE.format(version=WHEEL_VERSION, requirements=requirements)
    )
    wheel_dir.mkdir(parents=True, exist_ok=True)
    for old in wheel_dir.glob("detectron2-*.whl"):
        old.unlink()
    subprocess.run(
        [python, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheel_dir),
         str(source_root)],
        check=True,
    )
    wheels = list(wheel_dir.glob("detectron2-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one detectron2 wheel in {wheel_dir}, found {wheels}")
    log(f"built {wheels[0].name}")
    return wheels[0]


def build_and_install(python: str, cache_dir: Path) -> Path:
    sdist = download_sdist(python, cache_dir)
    with tempfile.TemporaryDirectory(prefix="detectron2-src-") as tmp:
        source_root = Path(tmp)
        package = extract_package(sdist, source_root)
        apply_rewrites(package)
        wheel = build_wheel(python, source_root, cache_dir / "wheels")
    log(f"installing {wheel.name}")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps",
                    str(wheel)], check=True)
    # Dependencies separately, so that --force-reinstall does not reinstall all of them.
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(wheel)], check=True)
    return wheel


def describe(info: dict) -> str:
    ops = "with C++ ops" if info["has_cpp_ops"] else "pure Python, no C++ ops"
    return f"detectron2 {info['version']} at {info['location']} ({ops})"


def list_rewrites_markdown() -> str:
    lines = ["| file | rewrite | why |", "|---|---|---|"]
    for rewrite in SOURCE_REWRITES:
        old = rewrite.old.strip().splitlines()[0]
        old = "np.bool/int/float/str" if rewrite.regex else old
        lines.append(f"| `{rewrite.path}` | `{old.replace('|', '/')}` ×{rewrite.count} "
                     f"| {rewrite.reason} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter whose environment receives detectron2")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="where the sdist and the built wheel are kept")
    parser.add_argument("--force", action="store_true",
                        help="rebuild and reinstall even if a detectron2 already imports")
    parser.add_argument("--list-rewrites", action="store_true",
                        help="print the source rewrites as a Markdown table and exit")
    args = parser.parse_args(argv)

    if args.list_rewrites:
        print(list_rewrites_markdown())
        return 0
    info = probe_detectron2(args.python)
    action = decide_action(info, force=args.force)
    if action == "keep":
        log(f"keeping the detectron2 that already imports: {describe(info)}")
        return 0
    if action == "up-to-date":
        log(f"already installed: {describe(info)}")
        return 0
    if action == "upgrade":
        log(f"replacing an older resbackbones build ({info['version']}) with {WHEEL_VERSION}")
    build_and_install(args.python, args.cache_dir)
    info = probe_detectron2(args.python)
    if info is None:
        log("detectron2 was installed but does not import; see the error above")
        return 1
    log(f"installed: {describe(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
