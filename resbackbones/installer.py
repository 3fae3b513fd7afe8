"""Detectron2 for resbackbones: find the one installed, check it, install v0.6 only where needed.

``python -m resbackbones install-detectron2`` (and ``tools/install_detectron2.py``, a thin wrapper
over :func:`main`). Detectron2 is not on PyPI, and a user who has one usually built it on purpose
(with CUDA ops, or upstream main), so the installer first asks the target interpreter
(``--python``) what it has, in a subprocess, and runs the API self-test there
(:func:`resbackbones.compat.check_detectron2_api` and ``detectron2_flavour``, loaded by file path).
What it finds decides what it does (:func:`decide_action`):

=================================  ===========================================================
found                              what happens
=================================  ===========================================================
no detectron2                      build and install v0.6 with :data:`SOURCE_REWRITES`
this installer's current build     nothing
this installer's older build       upgrade it (said so)
another build with every API       keep it, report its flavour (v0.6 or main)
another build lacking APIs         exit 1 naming them, the flavours supported and the fix
one that does not import           exit 1 with the error and the likely fix; never reinstalled
=================================  ===========================================================

``--replace`` replaces whatever is there, after copying it (package files and ``.dist-info``,
from its RECORD) into ``<cache>/backups/`` and printing the ``--restore`` command that puts it
back. ``--force`` only rebuilds this installer's own build; it refuses to touch another one.
torch is never installed or upgraded: pip runs with a constraint pinning the torch found, and
the torch version is compared before and after.

The build (no detectron2 found): the sdist that PyPI carries as ``pb1-detectron2==0.6`` (upstream
v0.6's Python code without its C++ sources) is downloaded from the index pip is configured with,
its sha256 verified, the rewrites applied (backports of what upstream fixed after v0.6, each
checked to match exactly where expected), and a pure-Python wheel named ``detectron2``, version
``0.6+resbackbones.N``, built and installed with pip. ``--list-rewrites`` prints the rewrite
table used in the README.

Standard library only, and no import of the ``resbackbones`` package: this runs before torch,
Detectron2 and the package's dependencies are importable, and is loaded by file path.
"""
from __future__ import annotations

import argparse
import hashlib
import html
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Sequence, Tuple

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



def _default_cache() -> Path:
    """Where the sdist, the wheel and the backups go: ``.cache/detectron2`` in a source checkout
    (as ``make`` has always used), else the user's cache folder (a wheel install has no
    checkout)."""
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "setup.cfg").is_file() and (checkout / "tools").is_dir():
        return checkout / ".cache" / "detectron2"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "resbackbones" / "detectron2"


DEFAULT_CACHE = _default_cache()
# The API self-test's source: loaded by file path in the target interpreter.
COMPAT_PATH = Path(__file__).resolve().with_name("compat.py")
DEFAULT_PROG = "python -m resbackbones install-detectron2"


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
    """One line on stdout for each thing found or done (nothing changes without one)."""
    print(f"[install-detectron2] {message}", flush=True)


def log_error(message: str) -> None:
    print(f"[install-detectron2] error: {message}", file=sys.stderr, flush=True)


class InstallerError(RuntimeError):
    """A failure the installer explains itself (printed without a traceback, exit status 1)."""


# ---------------------------------------------------------------------------------------------
# Probe: what the target interpreter has

PROBE_MARKER = "RESBACKBONES_DETECTRON2_PROBE "

# Runs in the target interpreter: loads this file (argv[1]) by path, prints probe_report().
_PROBE_BOOTSTRAP = """\
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("_resbackbones_installer_probe", sys.argv[1])
installer = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = installer
spec.loader.exec_module(installer)
print(installer.PROBE_MARKER + json.dumps(installer.probe_report(sys.argv[2])), flush=True)
"""


class _ProbeFailed(Exception):
    """Raised inside :func:`probe_report` once the report says why detectron2 does not import."""


def _record_failure(report: Dict[str, object], error: BaseException, module: str) -> _ProbeFailed:
    import traceback

    report.update(
        state="broken", failed_module=module, error_name=getattr(error, "name", None),
        error=traceback.format_exception_only(type(error), error)[-1].strip(),
        traceback="".join(traceback.format_exception(type(error), error,
                                                     error.__traceback__))[-4000:])
    return _ProbeFailed()


def _owning_distribution(init: Path) -> Optional[Dict[str, object]]:
    """The installed distribution whose RECORD holds this ``detectron2/__init__.py`` (or an
    editable install of its folder), with its files; None for a folder on ``sys.path``. (Not
    simply ``distribution("detectron2")``: a checkout on ``PYTHONPATH`` shadows an installed one,
    whose metadata would then describe a package that is not the one imported.)"""
    import importlib.metadata as metadata

    mapping = getattr(metadata, "packages_distributions", dict)  # Python >= 3.10
    names = mapping().get("detectron2", []) + ["detectron2"]
    for name in dict.fromkeys(names):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        files = [os.path.normpath(str(dist.locate_file(f))) for f in dist.files or []]
        owned = any(Path(f).resolve() == init for f in files)
        try:
            url = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            url = {}
        source = str(url.get("url", ""))
        source = urllib.parse.unquote(source[len("file://"):]) if source.startswith("file://") \
            else ""
        editable = bool(url.get("dir_info", {}).get("editable") and source
                        and Path(source).resolve() in init.parents)
        if owned or editable:
            return {"name": dist.metadata["Name"], "version": dist.version, "editable": editable,
                    "site": os.path.normpath(str(dist.locate_file(""))), "files": files}
    return None


def probe_report(compat_path: os.PathLike = COMPAT_PATH) -> Dict[str, object]:
    """What this interpreter's detectron2 is, as a JSON-able dict (the fields of
    :class:`Detectron2Probe`): found or not, imports or not (and why), flavour, C++ ops and the
    APIs resbackbones calls that it lacks (``compat.check_detectron2_api``, from
    ``compat_path``). Never raises for what it finds."""
    import importlib.metadata as metadata
    import sysconfig

    report: Dict[str, object] = {"state": "absent", "site": sysconfig.get_paths()["purelib"]}
    try:
        report["torch_version"] = metadata.version("torch")
    except metadata.PackageNotFoundError:
        report["torch_version"] = None
    try:
        _probe_into(report, Path(compat_path))
    except _ProbeFailed:
        pass
    except Exception as error:  # a Detectron2 too unlike both flavours for the self-test
        _record_failure(report, error, "the API self-test")
    return report


def _probe_into(report: Dict[str, object], compat_path: Path) -> None:
    try:
        spec = importlib.util.find_spec("detectron2")
    except Exception as error:
        raise _record_failure(report, error, "detectron2")
    if spec is None:
        return
    report["location"] = str(list(spec.submodule_search_locations or [spec.origin])[0])
    if spec.origin in (None, "namespace"):
        report.update(state="broken", failed_module="detectron2", error=(
            f"detectron2 is a folder without __init__.py at {report['location']} (a namespace "
            "package: left over from an uninstall?)"))
        return
    init = Path(spec.origin).resolve()
    report["location"] = str(init.parent)
    report["distribution"] = _owning_distribution(init)
    if report["distribution"]:
        report["version"] = report["distribution"]["version"]
    for module in ("torch", "detectron2"):  # detectron2 and its extension need torch loaded
        try:
            imported = importlib.import_module(module)
        except BaseException as error:
            raise _record_failure(report, error, module)
    report["version"] = str(getattr(imported, "__version__", "?"))
    report["has_cpp_ops"] = importlib.util.find_spec("detectron2._C") is not None
    if report["has_cpp_ops"]:
        try:
            importlib.import_module("detectron2._C")
        except BaseException as error:
            raise _record_failure(report, error, "detectron2._C")
    compat_spec = importlib.util.spec_from_file_location("_resbackbones_compat_probe",
                                                         compat_path)
    compat = importlib.util.module_from_spec(compat_spec)
    sys.modules[compat_spec.name] = compat
    compat_spec.loader.exec_module(compat)
    for module in dict.fromkeys(name for name, _ in compat.REQUIRED_APIS):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            # A module this Detectron2 lacks is a missing API (check_detectron2_api names it); a
            # missing extension or another package means a broken installation.
            missing = error.name or ""
            if not missing.startswith("detectron2.") or missing == "detectron2._C":
                raise _record_failure(report, error, module)
        except BaseException as error:
            raise _record_failure(report, error, module)
    report["missing_apis"] = compat.check_detectron2_api()
    report["api_count"] = len(compat.REQUIRED_APIS)
    try:
        report["flavour"] = compat.detectron2_flavour().name
    except ImportError:  # no detectron2.utils.comm: listed as missing; the flavour is unknown
        report["flavour"] = "unknown"
    report["state"] = "ok"


@dataclass(frozen=True)
class Detectron2Probe:
    """What the target interpreter has, as found by :func:`probe_detectron2`.

    Attributes:
        state: "absent" (no detectron2), "broken" (it does not import: see ``error``) or "ok".
        python: the interpreter asked.
        site: that interpreter's site-packages (where pip installs).
        location: the ``detectron2`` package folder.
        version: ``detectron2.__version__`` (the distribution's version when it does not import).
        flavour: "v0.6" or "main", told by capability (``compat.detectron2_flavour``).
        has_cpp_ops: the compiled extension ``detectron2._C`` is present (and loads).
        missing_apis: the ``module.attribute`` names resbackbones calls that are absent.
        api_count: how many APIs the self-test checked.
        error: the last line of the import traceback; ``failed_module`` the module that raised.
        distribution: the installed distribution owning the package (name, version, site, files
            from its RECORD), or None for a folder on ``sys.path``/``PYTHONPATH``.
        torch_version: torch's installed version, or None.
    """

    state: str
    python: str
    site: Optional[str] = None
    location: Optional[str] = None
    version: Optional[str] = None
    flavour: Optional[str] = None
    has_cpp_ops: bool = False
    missing_apis: Tuple[str, ...] = ()
    api_count: int = 0
    error: Optional[str] = None
    error_name: Optional[str] = None
    failed_module: Optional[str] = None
    traceback: Optional[str] = None
    distribution: Optional[Dict[str, object]] = field(default=None, compare=False)
    torch_version: Optional[str] = None

    @property
    def patch_level(self) -> Optional[int]:
        """This installer's PATCH_LEVEL of the build found, or None for any other build."""
        versions = [self.version]
        if self.distribution:
            versions.insert(0, str(self.distribution.get("version")))
        for version in versions:
            match = LOCAL_VERSION_PATTERN.match(str(version))
            if match:
                return int(match.group(1))
        return None

    @property
    def built_by_resbackbones(self) -> bool:
        return self.patch_level is not None

    def describe(self) -> str:
        """One line: flavour, version, origin, C++ ops and location."""
        if self.state == "absent":
            return f"no detectron2 in {self.python}"
        if self.built_by_resbackbones:
            origin = "built by resbackbones' installer"
        elif self.distribution:
            origin = (f"installed as {self.distribution['name']} {self.distribution['version']}"
                      + (", editable" if self.distribution.get("editable") else ""))
        else:
            origin = "not an installed distribution: a folder on sys.path or PYTHONPATH"
        if self.state == "broken":
            return (f"detectron2 {self.version or '?'} ({origin}) at {self.location}: does not "
                    "import")
        ops = "with C++ ops" if self.has_cpp_ops else "pure Python, no C++ ops"
        return (f"Detectron2 {self.flavour} flavour (version {self.version}, {origin}, {ops}) at "
                f"{self.location}")

    def self_test(self) -> str:
        """The API self-test's result in one line."""
        if self.missing_apis:
            return (f"API self-test: {len(self.missing_apis)} of the {self.api_count} APIs "
                    f"resbackbones calls are missing: {', '.join(self.missing_apis)}")
        return f"API self-test: all {self.api_count} APIs resbackbones calls are present"


def _check_interpreter(python: str) -> str:
    found = shutil.which(python) if os.sep not in python else (python if os.access(python, os.X_OK)
                                                               else None)
    if not found or not Path(found).is_file():
        raise InstallerError(f"--python {python!r} is not an executable Python interpreter; give "
                             "the path of one, e.g. /path/to/env/bin/python")
    return python


def probe_detectron2(python: str = sys.executable, env: Optional[Dict[str, str]] = None,
                     timeout: float = 600) -> Detectron2Probe:
    """Ask ``python`` (in a subprocess, so that a crash or a half-import stays there) whether
    detectron2 imports, which flavour it is, whether its C++ ops load and which APIs it lacks.

    A crash of the interpreter (for example a segfault in a C++ extension built for another torch)
    is a "broken" detectron2, never an absent one.
    """
    _check_interpreter(python)
    try:
        result = subprocess.run([python, "-c", _PROBE_BOOTSTRAP, str(Path(__file__).resolve()),
                                 str(COMPAT_PATH)], env=env, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return Detectron2Probe(state="broken", python=python, failed_module="detectron2",
                               error=f"importing detectron2 took more than {timeout:.0f} s")
    lines = [line for line in result.stdout.splitlines() if line.startswith(PROBE_MARKER)]
    if not lines:
        how = (f"was killed by signal {-result.returncode}" if result.returncode < 0
               else f"exited with status {result.returncode}")
        tail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return Detectron2Probe(state="broken", python=python, failed_module="detectron2",
                               error=f"the interpreter {how} while importing detectron2: {tail[0]}",
                               traceback=result.stderr[-4000:])
    return _probe_from_report(python, json.loads(lines[-1][len(PROBE_MARKER):]))


def probe_this_interpreter() -> Detectron2Probe:
    """:func:`probe_detectron2` for the running interpreter, in this process (the doctor: its
    Detectron2 modules are mostly imported already, so this costs seconds, not an interpreter)."""
    return _probe_from_report(sys.executable, probe_report())


def _probe_from_report(python: str, report: Dict[str, object]) -> Detectron2Probe:
    report = dict(report, missing_apis=tuple(report.get("missing_apis") or ()))
    return Detectron2Probe(python=python, **report)


def installed_versions(python: str, distributions: Sequence[str] = ("torch", "torchvision"),
                       env: Optional[Dict[str, str]] = None) -> Dict[str, Optional[str]]:
    """The installed version of each distribution in ``python``'s environment (None: absent),
    read from metadata without importing anything."""
    code = ("import importlib.metadata as m, json, sys\n"
            "def v(n):\n"
            "    try:\n"
            "        return m.version(n)\n"
            "    except m.PackageNotFoundError:\n"
            "        return None\n"
            "print(json.dumps({n: v(n) for n in sys.argv[1:]}))\n")
    result = subprocess.run([python, "-c", code, *distributions], env=env, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])
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


# ---------------------------------------------------------------------------------------------
# Decision: what to do with what was found

# Every outcome of decide_action, and what it means; the refusals change nothing.
ACTIONS: Dict[str, str] = {
    "install": "no detectron2: build and install v0.6 with the source rewrites",
    "up-to-date": "this installer's current build: nothing to do",
    "upgrade": "this installer's older build: replace it with the current one",
    "reinstall": "this installer's build and --force: rebuild and reinstall it",
    "keep": "another build with every API resbackbones calls: keep it",
    "replace": "--replace: back up what is there, remove it, install v0.6",
    "refuse-missing-api": "a build lacking APIs resbackbones calls: exit 1 naming them and the fix",
    "refuse-broken": "a detectron2 that does not import: exit 1 with the cause and the fix",
    "refuse-force": "--force on another build: exit 2 (only --replace replaces another build)",
}
REFUSAL_STATUS = {"refuse-missing-api": 1, "refuse-broken": 1, "refuse-force": 2}


def decide_action(probe: Detectron2Probe, replace: bool = False, force: bool = False) -> str:
    """What to do given the probe: one key of :data:`ACTIONS`.

    Only two cases change the environment unasked: nothing is installed, or this installer's own
    build is older than the current one. Anything else that works is kept; anything that does not
    work, or is someone else's, is replaced only with ``replace`` (after a backup).
    """
    if probe.state == "absent":
        return "install"
    if replace:
        return "replace"
    level = probe.patch_level
    if level is not None:
        if force:
            return "reinstall"
        if level < PATCH_LEVEL:
            return "upgrade"
        if probe.state == "broken":
            return "refuse-broken"
        return "refuse-missing-api" if probe.missing_apis else "up-to-date"
    if force:
        return "refuse-force"
    if probe.state == "broken":
        return "refuse-broken"
    return "refuse-missing-api" if probe.missing_apis else "keep"


def _load_compat() -> ModuleType:
    """resbackbones/compat.py by file path (stdlib-only at import): the supported flavours and the
    wording of an unsupported Detectron2, without importing the package."""
    name = "_resbackbones_compat_for_installer"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, COMPAT_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def likely_fix(probe: Detectron2Probe, command: str) -> str:
    """The most probable remedy for a detectron2 that does not import, from its error."""
    error = probe.error or ""
    name = probe.error_name or ""
    if probe.failed_module == "torch":
        return (f"torch itself does not import in {probe.python}: repair or reinstall torch first "
                "(this installer never installs or upgrades torch), then run it again")
    if (name == "detectron2._C" and "No module named" in error) or \
            "cannot import name '_C' from" in error:
        return ("detectron2 imports its C++ extension (detectron2._C), which is not there: it was "
                "installed from source without building it. Build it for this torch (in its "
                "source folder: pip install --no-build-isolation -e .), or replace it with "
                f"resbackbones' pure-Python v0.6 build (a backup is kept): {command} --replace")
    compiled = (probe.failed_module == "detectron2._C" or name == "detectron2._C"
                or any(sign in error for sign in ("undefined symbol", "killed by signal",
                                                  "DLL load failed", "_C")))
    if compiled:
        return (f"detectron2's compiled C++ extension does not load with the torch installed now "
                f"({probe.torch_version}): it was most likely built against another torch. "
                "Rebuild detectron2 for this torch (in its source folder: pip install "
                "--no-build-isolation -e .), or go back to the torch it was built with; or replace "
                f"it with resbackbones' pure-Python v0.6 build (a backup is kept): {command} "
                "--replace")
    if "No module named" in error and name and not name.startswith("detectron2"):
        return (f"a package Detectron2 needs is missing: the module '{name}' (usually pip install "
                f"{name.split('.')[0]}), then run {command} again")
    if probe.built_by_resbackbones:
        return f"rebuild resbackbones' build: {command} --force"
    return (f"replace it with resbackbones' v0.6 build (a backup is kept): {command} --replace")


def refusal_message(probe: Detectron2Probe, action: str, command: str) -> str:
    """Why ``action`` (a refusal) changes nothing, and the command that would fix it."""
    if action == "refuse-force":
        return (f"--force rebuilds resbackbones' own build only; the detectron2 found is another "
                f"one: {probe.describe()}. Nothing was changed. To replace it (a backup is kept): "
                f"{command} --replace")
    if action == "refuse-broken":
        module = probe.failed_module or "detectron2"
        return (f"detectron2 at {probe.location} does not import in {probe.python}: importing "
                f"{module} raised {probe.error}. Nothing was changed (a detectron2 that fails to "
                f"import is never reinstalled unasked). Likely fix: {likely_fix(probe, command)}")
    compat = _load_compat()
    text = compat.unsupported_detectron2_message(probe.location, probe.version or "?",
                                                 probe.missing_apis)
    fix = (f"{command} --force" if probe.built_by_resbackbones
           else f"{command} --replace (a backup of this one is kept)")
    return f"{text} Nothing was changed. For this interpreter: {fix}"


def command_line(command: Sequence[str], python: str) -> str:
    """The exact command to run again, with ``--python`` where the target is another interpreter."""
    words = list(command)
    if os.path.abspath(python) != os.path.abspath(sys.executable):
        words += ["--python", python]
    return shlex.join(words)


# ---------------------------------------------------------------------------------------------
# Backups: a way back from --replace

MANIFEST = "manifest.json"


def not_a_distribution_message(probe: Detectron2Probe) -> str:
    """Why a detectron2 folder on ``sys.path`` (no RECORD) is not replaced."""
    return (f"the detectron2 at {probe.location} is not an installed distribution (a folder on "
            "sys.path or PYTHONPATH, with no RECORD of its files): it cannot be backed up and "
            "removed, and it would still shadow an installed one. Take it off the path (or "
            "remove it) yourself; nothing was changed")


def backup_installation(probe: Detectron2Probe, backup_root: Path) -> Path:
    """Copy every file of the detectron2 distribution found (its RECORD: the package, its
    ``.dist-info``, an editable install's ``.pth``) into a new folder under ``backup_root``, with
    a manifest of where each came from; returns the folder, complete or absent (written under a
    temporary name, renamed at the end)."""
    dist = probe.distribution
    if not dist:
        raise InstallerError(not_a_distribution_message(probe))
    site = str(dist["site"])
    files = [str(path) for path in dist["files"] if os.path.isfile(str(path))]
    version = re.sub(r"[^A-Za-z0-9.+_-]", "_", str(probe.version or dist["version"]))
    folder = backup_root / f"detectron2-{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = folder.with_name(f"{folder.name.rsplit('~', 1)[0]}~{suffix}")
    staging = folder.with_name(f".{folder.name}.partial")
    entries = []
    for index, path in enumerate(files):
        relative = os.path.relpath(path, site)
        saved = (Path("files") / relative if not relative.startswith("..")
                 else Path("outside") / f"{index}-{Path(path).name}")
        (staging / saved).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, staging / saved)
        entries.append({"path": path, "saved": saved.as_posix()})
    manifest = {"python": probe.python, "site": site, "location": probe.location,
                "distribution": dist["name"], "version": probe.version or dist["version"],
                "flavour": probe.flavour, "description": probe.describe(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": entries}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    staging.rename(folder)
    log(f"backed up {dist['name']} {dist['version']} ({len(entries)} files from {site}) to "
        f"{folder}")
    return folder


def read_backup(folder: Path, backups: Optional[Path] = None) -> Dict[str, object]:
    """The manifest of a backup folder, or an error naming the folder and the backups there are
    (in ``backups``, default the folder's parent)."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        root = Path(backups or Path(folder).parent)
        found = sorted(p.name for p in root.glob("detectron2-*") if (p / MANIFEST).is_file())
        listing = ", ".join(found) if found else "none"
        raise InstallerError(
            f"--restore {folder}: not a backup made by this installer (no {MANIFEST}). Backups are "
            f"the folders that --replace writes under <cache-dir>/backups/; in {root}: {listing}")
    return json.loads(manifest.read_text())


def remove_installation(folder: Path) -> int:
    """Delete the files a backup in ``folder`` holds (and the folders they leave empty, with
    their ``__pycache__``); returns how many files were removed. Only what was saved is removed."""
    manifest = read_backup(folder)
    removed = 0
    parents = set()
    for entry in manifest["files"]:
        path = Path(entry["path"])
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed += 1
        parents.add(path.parent)
    site = Path(str(manifest["site"])).resolve()
    for directory in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        # A folder left with only byte code would import as an empty namespace package.
        while site in directory.resolve().parents:
            if directory.is_dir():
                caches = directory if directory.name == "__pycache__" else directory / "__pycache__"
                if caches.is_dir() and all(p.suffix == ".pyc" for p in caches.iterdir()):
                    shutil.rmtree(caches)
                if directory.is_dir():
                    if any(directory.iterdir()):
                        break
                    directory.rmdir()
            directory = directory.parent
    log(f"removed {removed} files of {manifest['distribution']} {manifest['version']} from "
        f"{manifest['site']} (saved in {folder})")
    return removed


def restore_installation(folder: Path, python: Optional[str], cache_dir: Path,
                         command: Sequence[str]) -> int:
    """Put back the detectron2 saved in ``folder`` by ``--replace``: the detectron2 installed now
    is backed up and removed first (so that this, too, can be undone); returns the exit status."""
    manifest = read_backup(folder, cache_dir / "backups")
    python = python or str(manifest["python"])
    current = probe_detectron2(python)
    if current.state != "absent":
        if not current.distribution:
            raise InstallerError(
                f"a detectron2 that is not an installed distribution is at {current.location} (on "
                "sys.path or PYTHONPATH) and would shadow the restored one: take it off the path "
                "first; nothing was changed")
        log(f"restoring {folder.name}: first saving and removing the detectron2 installed now: "
            f"{current.describe()}")
        saved_now = backup_installation(current, Path(folder).parent)
        log(f"to undo this restore later: {shlex.join([*command, '--restore', str(saved_now)])}")
        remove_installation(saved_now)
    for entry in manifest["files"]:
        target = Path(entry["path"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(folder) / entry["saved"], target)
    log(f"restored {len(manifest['files'])} files of {manifest['distribution']} "
        f"{manifest['version']} to {manifest['site']}")
    after = probe_detectron2(python)
    if after.state != "ok":
        log_error(f"the restored detectron2 does not import: {after.error}")
        return 1
    log(f"restored: {after.describe()}")
    log(after.self_test())
    return 0
# ---------------------------------------------------------------------------------------------
# Installing, without touching torch


class TorchChangedError(InstallerError):
    """pip changed torch while installing detectron2 (it must never)."""


def pip_install(python: str, arguments: Sequence[str], keep: Dict[str, Optional[str]]) -> None:
    """``pip install`` into ``python``'s environment with the versions in ``keep`` pinned by a
    constraint (so that a dependency can never upgrade torch), only-if-needed upgrades."""
    with tempfile.TemporaryDirectory(prefix="resbackbones-pip-") as tmp:
        constraints = Path(tmp) / "keep-torch.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in keep.items()
                                       if version))
        words = [python, "-m", "pip", "install", "--quiet", "--upgrade-strategy",
                 "only-if-needed", "-c", str(constraints), *arguments]
        result = subprocess.run(words)
    if result.returncode != 0:
        raise InstallerError(f"pip failed (exit status {result.returncode}; its output is above): "
                             f"{shlex.join(words[:4] + list(arguments))}")


def check_torch_unchanged(python: str, before: Dict[str, Optional[str]]) -> None:
    """Raise :class:`TorchChangedError` if torch or torchvision differ from ``before``."""
    after = installed_versions(python, list(before))
    changed = {name: (version, after.get(name)) for name, version in before.items()
               if after.get(name) != version}
    if changed:
        text = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changed.items())
        pins = " ".join(f"{name}=={old}" for name, (old, _) in changed.items() if old)
        raise TorchChangedError(
            f"pip changed {text} while installing detectron2; this installer must never change "
            f"torch. Put yours back with: {python} -m pip install {pins} (the build for your "
            "CUDA may need its own --index-url), and report this")


def prepare_wheel(python: str, cache_dir: Path) -> Path:
    """Build this installer's detectron2 wheel (v0.6 with the rewrites) in ``cache_dir/wheels``;
    changes nothing in the environment (done before anything is removed)."""
    sdist = download_sdist(python, cache_dir)
    with tempfile.TemporaryDirectory(prefix="detectron2-src-") as tmp:
        source_root = Path(tmp)
        package = extract_package(sdist, source_root)
        apply_rewrites(package)
        return build_wheel(python, source_root, cache_dir / "wheels")


def require_torch(python: str) -> Dict[str, Optional[str]]:
    """torch's and torchvision's installed versions, or an error: torch is the user's to
    install (the build for their CUDA), never this installer's."""
    versions = installed_versions(python)
    if not versions.get("torch"):
        raise InstallerError(
            f"torch is not installed in {python}: install the build for your machine first "
            "(https://pytorch.org/get-started/locally/); this installer never installs or "
            "upgrades torch")
    return versions


def install_wheel(python: str, wheel: Path, keep: Dict[str, Optional[str]]) -> None:
    """Install ``wheel`` into ``python``'s environment and only the dependencies that are
    missing, with the versions in ``keep`` (torch, torchvision) pinned and checked after."""
    kept = ", ".join(f"{name} {version}" for name, version in keep.items() if version)
    log(f"installing {wheel.name} into {python}'s environment with pip (keeping {kept})")
    pip_install(python, ["--force-reinstall", "--no-deps", str(wheel)], keep)
    # Dependencies separately, so that --force-reinstall does not reinstall all of them.
    log("installing the dependencies of detectron2 that are missing (pip, only if needed)")
    pip_install(python, [str(wheel)], keep)
    check_torch_unchanged(python, keep)


def list_rewrites_markdown() -> str:
    """The rewrite table of the README (a test keeps the two equal)."""
    lines = ["| file | rewrite | why |", "|---|---|---|"]
    for rewrite in SOURCE_REWRITES:
        old = rewrite.old.strip().splitlines()[0]
        old = "np.bool/int/float/str" if rewrite.regex else old
        lines.append(f"| `{rewrite.path}` | `{old.replace('|', '/')}` ×{rewrite.count} "
                     f"| {rewrite.reason} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line

_PLANS = {
    "install": "no detectron2 in {python}: building Detectron2 v0.6 with {rewrites} source "
               "rewrites and installing it as detectron2 {wheel}",
    "upgrade": "replacing an older resbackbones build ({version}) with {wheel}",
    "reinstall": "--force: rebuilding and reinstalling resbackbones' build ({version} -> {wheel})",
    "replace": "--replace: replacing {description} with detectron2 {wheel}",
}


def carry_out(action: str, probe: Detectron2Probe, cache_dir: Path, command: Sequence[str],
              dry_run: bool = False) -> int:
    """Do what :func:`decide_action` chose, saying so; returns the exit status."""
    again = command_line(command, probe.python)
    if action in REFUSAL_STATUS:
        log(f"found: {probe.describe()}")
        if probe.state == "ok":
            log(probe.self_test())
        log_error(refusal_message(probe, action, again))
        return REFUSAL_STATUS[action]
    if action in ("keep", "up-to-date"):
        verb = "keeping the detectron2 that already imports" if action == "keep" else \
            "already installed"
        log(f"{verb}: {probe.describe()}")
        log(probe.self_test())
        return 0
    if action == "replace" and probe.distribution is None:
        raise InstallerError(not_a_distribution_message(probe))
    log(_PLANS[action].format(python=probe.python, rewrites=len(SOURCE_REWRITES),
                              wheel=WHEEL_VERSION, version=probe.version,
                              description=probe.describe()))
    if dry_run:
        if action == "replace":
            dist = probe.distribution
            log(f"--dry-run: would first save the {len(dist['files'])} files of {dist['name']} "
                f"{dist['version']} (its RECORD) under {cache_dir / 'backups'}")
        log("--dry-run: nothing was changed")
        return 0
    keep = require_torch(probe.python)
    wheel = prepare_wheel(probe.python, cache_dir)
    backup = None
    if action == "replace":
        backup = backup_installation(probe, cache_dir / "backups")
        log(f"to put it back: {shlex.join([*command, '--restore', str(backup)])}")
        remove_installation(backup)
    try:
        install_wheel(probe.python, wheel, keep)
    except BaseException:
        if backup is not None:
            log_error(f"installing failed; the detectron2 replaced is saved in {backup}: "
                      f"{shlex.join([*command, '--restore', str(backup)])}")
        raise
    after = probe_detectron2(probe.python)
    if after.state != "ok" or not after.built_by_resbackbones or after.missing_apis:
        if after.built_by_resbackbones:
            problem = after.error or after.self_test()
        else:
            problem = f"`import detectron2` finds another one first: {after.describe()}"
        log_error(f"detectron2 {WHEEL_VERSION} was installed but does not work: {problem}")
        return 1
    log(f"installed: {after.describe()}")
    log(after.self_test())
    return 0


def build_parser(prog: str = DEFAULT_PROG) -> argparse.ArgumentParser:
    """The installer's flags (shared by ``python -m resbackbones install-detectron2`` and
    ``tools/install_detectron2.py``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Check the detectron2 of an environment and install Detectron2 "
        "v0.6 (pure Python, with backports) only where none is installed.",
        epilog="Exit status: 0 when a working detectron2 is there at the end; 1 when the one found "
        "lacks APIs or does not import (nothing is changed unless --replace) or installing "
        "failed; 2 for bad flags.")
    parser.add_argument("--python", default=None,
                        help="interpreter whose environment is checked and receives detectron2 "
                        "(default: this one; for --restore: the one the backup came from)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"where the sdist, the wheel and backups/ are kept ({DEFAULT_CACHE})")
    parser.add_argument("--replace", action="store_true",
                        help="replace the detectron2 found, whatever it is (another build, one "
                        "lacking APIs, one that does not import), after copying it to "
                        "<cache-dir>/backups/; prints the --restore command")
    parser.add_argument("--force", action="store_true",
                        help="rebuild and reinstall resbackbones' own build even when current; "
                        "never replaces another build (that is --replace)")
    parser.add_argument("--restore", type=Path, metavar="BACKUP",
                        help="put back a detectron2 saved by --replace (the one installed now "
                        "is saved and removed first)")
    parser.add_argument("--dry-run", action="store_true",
                        help="say what would be done, change nothing")
    parser.add_argument("--list-rewrites", action="store_true",
                        help="print the source rewrites as a Markdown table and exit")
    return parser


def main(argv: Optional[Sequence[str]] = None, prog: str = DEFAULT_PROG,
         command: Optional[Sequence[str]] = None) -> int:
    """Run the installer; returns the exit status.

    Args:
        argv: the flags (default: ``sys.argv[1:]``).
        prog: the name shown in ``--help``.
        command: how this installer is started, for the commands it prints (default:
            ``<this python> -m resbackbones install-detectron2``).
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    command = list(command or [sys.executable, "-m", "resbackbones", "install-detectron2"])
    if args.restore and (args.replace or args.force or args.list_rewrites):
        parser.error("--restore puts a backup back; it cannot be combined with --replace, "
                     "--force or --list-rewrites")
    if args.list_rewrites:
        print(list_rewrites_markdown())
        return 0
    try:
        if args.restore:
            return restore_installation(args.restore.resolve(), args.python, args.cache_dir,
                                        command)
        probe = probe_detectron2(args.python or sys.executable)
        action = decide_action(probe, replace=args.replace, force=args.force)
        return carry_out(action, probe, args.cache_dir, command, dry_run=args.dry_run)
    except InstallerError as error:
        log_error(str(error))
        return 1


if __name__ == "__main__":
    sys.exit(main())
