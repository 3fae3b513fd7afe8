"""``python -m resbackbones doctor``: what this environment has, whether the core works, and what
to do about what is missing. ``python -m resbackbones.env`` prints the same.

Users paste it into bug reports. It names the Detectron2 flavour (v0.6 or upstream main, told by
capability), runs the API self-test, says whether Detectron2's C++ ops are there, and lists the
package's optional extras with the ``pip install`` line of each one missing. Detectron2 is checked
by the installer's own probe (:func:`resbackbones.installer.probe_report`), so the two never
disagree, and a Detectron2 that is missing or fails to import is reported, never fatal.

Exit status: 0 when the core works (torch, a supported Detectron2, the package's requirements),
1 otherwise; a missing extra is reported but is not a failure.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from resbackbones.installer import (Detectron2Probe, likely_fix, probe_this_interpreter,
                                    refusal_message)

__all__ = ["DoctorReport", "collect_env_rows", "doctor_main", "doctor_report", "extras_status",
           "format_env_table"]

DISTRIBUTION = "resbackbones"
INSTALL_DETECTRON2 = "python -m resbackbones install-detectron2"
# Versions worth having in a bug report besides torch and Detectron2.
REPORTED_DISTRIBUTIONS = ("timm", "fvcore", "iopath", "pycocotools", "numpy", "pillow",
                          "safetensors")
CPP_OPS_ABSENT = ("absent (deformable and rotated-box ops unavailable; ROIAlign and NMS come "
                  "from torchvision)")


@dataclass
class DoctorReport:
    """What the doctor found.

    Attributes:
        rows: (name, value) lines of the report, in order.
        problems: what keeps the core from working, each with its fix (empty: the core works).
        missing_extras: extra name -> its ``pip install`` line, for extras not fully importable.
    """

    rows: List[Tuple[str, str]] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    missing_extras: Dict[str, str] = field(default_factory=dict)

    @property
    def core_works(self) -> bool:
        return not self.problems


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _error_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _torch_rows(report: DoctorReport) -> None:
    try:
        import torch
    except Exception as error:  # report, don't crash: this is a diagnostic tool
        report.rows.append(("torch", f"does not import ({_error_line(error)})"))
        report.problems.append(
            f"torch does not import ({_error_line(error)}): install the build for your machine "
            "(https://pytorch.org/get-started/locally/), then run this again")
        return
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
    report.rows.append(("torch", f"{torch.__version__} ({build})"))
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    gpus = f"{count} GPU(s)"
    if count:
        names = sorted({torch.cuda.get_device_name(index) for index in range(count)})
        gpus += f": {', '.join(names)}"
    report.rows.append(("CUDA available", f"{available} ({gpus})"))
    report.rows.append(("CPU threads", str(torch.get_num_threads())))
    try:
        import torchvision
    except Exception as error:
        report.rows.append(("torchvision", f"does not import ({_error_line(error)})"))
        report.problems.append(f"torchvision does not import ({_error_line(error)}): install the "
                               f"torchvision that matches torch {torch.__version__}")
        return
    report.rows.append(("torchvision", torchvision.__version__))


def _detectron2_rows(report: DoctorReport, probe: Detectron2Probe) -> None:
    if probe.state == "absent":
        report.rows.append(("Detectron2", "not installed"))
        report.problems.append(f"Detectron2 is not installed (it is not on PyPI): "
                               f"{INSTALL_DETECTRON2}")
        return
    if probe.state == "broken":
        report.rows.append(("Detectron2", probe.describe()))
        report.rows.append(("import error", f"{probe.failed_module}: {probe.error}"))
        report.problems.append(f"Detectron2 does not import ({probe.error}). Likely fix: "
                               f"{likely_fix(probe, INSTALL_DETECTRON2)}")
        return
    report.rows.append(("Detectron2 flavour", probe.flavour or "?"))
    report.rows.append(("Detectron2", probe.describe()))
    report.rows.append(("API self-test", probe.self_test().split(": ", 1)[1]))
    report.rows.append(("Detectron2 C++ ops", "present" if probe.has_cpp_ops else CPP_OPS_ABSENT))
    if probe.missing_apis:
        report.problems.append(refusal_message(probe, "refuse-missing-api", INSTALL_DETECTRON2))


_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA = re.compile(r"""extra\s*==\s*['"]([^'"]+)['"]""")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements() -> Optional[Tuple[List[str], Dict[str, List[str]]]]:
    """(core distribution names, extra -> distribution names) from the package's metadata, or
    None when resbackbones is not installed as a distribution (a source tree on the path)."""
    try:
        requirements = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    core: List[str] = []
    extras: Dict[str, List[str]] = {}
    for requirement in requirements:
        name = _NAME.match(requirement)
        if not name:
            continue
        extra = _EXTRA.search(requirement.partition(";")[2])
        target = extras.setdefault(extra.group(1), []) if extra else core
        if name.group(1) not in target:
            target.append(name.group(1))
    return core, extras


def _modules_by_distribution() -> Dict[str, List[str]]:
    modules: Dict[str, List[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        if module.startswith("_") or module in ("tests", "test"):
            continue
        for distribution in distributions:
            modules.setdefault(_normalise(distribution), []).append(module)
    return modules


def extras_status() -> Optional[Dict[str, Dict[str, str]]]:
    """Each extra of the installed resbackbones distribution -> {its distribution: "ok" or why
    not}: not installed, or a module of it that does not import. None without the metadata."""
    requirements = _requirements()
    if requirements is None:
        return None
    modules = _modules_by_distribution()
    status: Dict[str, Dict[str, str]] = {}
    checked: Dict[str, str] = {}
    for extra, distributions in requirements[1].items():
        status[extra] = {}
        for distribution in distributions:
            if distribution not in checked:
                checked[distribution] = _importable(distribution, modules)
            status[extra][distribution] = checked[distribution]
    return status


def _importable(distribution: str, modules: Dict[str, List[str]]) -> str:
    if _version(distribution) == "not installed":
        return "not installed"
    for module in sorted(modules.get(_normalise(distribution), [])):
        try:
            importlib.import_module(module)
        except Exception as error:  # an extra that does not import is reported, not raised
            return f"installed, but {module} does not import ({_error_line(error)})"
    return "ok"


def _package_rows(report: DoctorReport) -> None:
    from resbackbones import __path__ as package_path
    from resbackbones import __version__

    report.rows.append(("resbackbones", f"{__version__} at {list(package_path)[0]}"))
    requirements = _requirements()
    if requirements is None:
        report.rows.append(("requirements", "unknown: resbackbones is not installed as a "
                                            "distribution (pip install -e . in the checkout)"))
        return
    missing = [name for name in requirements[0] if _version(name) == "not installed"]
    if missing:
        report.rows.append(("requirements", f"missing: {', '.join(missing)}"))
        report.problems.append(f"requirements of resbackbones are not installed: "
                               f"{', '.join(missing)}: pip install {' '.join(missing)}")
    else:
        report.rows.append(("requirements", f"all {len(requirements[0])} installed"))
    for extra, distributions in (extras_status() or {}).items():
        absent = {name: why for name, why in distributions.items() if why != "ok"}
        if not absent:
            report.rows.append((f"extra '{extra}'", f"ok ({', '.join(distributions)})"))
            continue
        line = f"pip install '{DISTRIBUTION}[{extra}]'"
        report.missing_extras[extra] = line
        whys = "; ".join(f"{name} {why}" for name, why in absent.items())
        report.rows.append((f"extra '{extra}'", f"missing ({whys}): {line}"))


def doctor_report() -> DoctorReport:
    """Check torch, CUDA, Detectron2 (flavour, API self-test, C++ ops), the package's
    requirements and extras of this interpreter; never raises for what it finds broken."""
    report = DoctorReport()
    report.rows.append(("Python", f"{platform.python_version()} ({sys.executable})"))
    report.rows.append(("platform", platform.platform()))
    _torch_rows(report)
    _detectron2_rows(report, probe_this_interpreter())
    for distribution in REPORTED_DISTRIBUTIONS:
        report.rows.append((distribution, _version(distribution)))
    _package_rows(report)
    return report


def collect_env_rows() -> List[Tuple[str, str]]:
    """(name, value) rows describing Python, torch, CUDA, Detectron2 and key libraries."""
    return doctor_report().rows


def format_env_table(rows: List[Tuple[str, str]]) -> str:
    """The rows as two aligned columns."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def format_doctor(report: DoctorReport) -> str:
    """The report, then the verdict and what to do."""
    lines = [format_env_table(report.rows), ""]
    if report.core_works:
        lines.append("The core works (torch, Detectron2, the package's requirements).")
    else:
        lines.append("The core does not work. To fix:")
        lines += [f"  - {problem}" for problem in report.problems]
    if report.missing_extras:
        lines.append("Optional extras missing (features that need them say so when used):")
        lines += [f"  - {extra}: {line}" for extra, line in report.missing_extras.items()]
    return "\n".join(lines)


def doctor_main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m resbackbones doctor``: print the report; exit status 0 when the core works."""
    parser = argparse.ArgumentParser(
        prog="python -m resbackbones doctor",
        description="Check this environment: Python, torch and CUDA, the Detectron2 flavour and "
                    "its API self-test, C++ ops, the package's requirements and extras.",
        epilog="Exit status 0 when the core works, 1 otherwise (a missing extra is not a failure).")
    parser.parse_args(list(argv) if argv is not None else None)
    report = doctor_report()
    print(format_doctor(report), flush=True)
    return 0 if report.core_works else 1


def main() -> None:
    """``python -m resbackbones.env``: the doctor's report and exit status."""
    sys.exit(doctor_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
