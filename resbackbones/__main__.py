"""``python -m resbackbones <command>``: every command line of the package, one entry point.

    python -m resbackbones --help                 # the commands, one line each
    python -m resbackbones configs mask_rcnn      # packaged configs (names for --config-file)
    python -m resbackbones train --config-file \\
        quick_schedules/mask_rcnn_R_18_FPN_synthetic_instant_test.yaml MODEL.DEVICE cpu

A pip user has no ``tools/`` folder, so everything a tool does is a library function that takes
``argv`` and returns an exit status; ``tools/*.py`` call the same functions. :data:`COMMANDS`
names each one as a ``"module:function"`` string that is imported only when its command runs:
a command's heavy imports (Detectron2, Gradio, onnxruntime) cost the others nothing, and a
command whose module or function is missing fails alone, with a message naming it.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

CommandFunction = Callable[[List[str]], Optional[int]]


def catalog_list_main(argv: Sequence[str]) -> int:
    """``list [--input-size H W] [--names ...]``: the catalog table with parameters and GFLOPs."""
    import argparse

    parser = argparse.ArgumentParser(description="Every architecture of the catalog with "
                                                 "parameters and GFLOPs.")
    parser.add_argument("--input-size", nargs=2, type=int, default=[800, 1333],
                        metavar=("HEIGHT", "WIDTH"), help="image size for GFLOPs (800 1333)")
    parser.add_argument("--names", nargs="+", help="only these architectures")
    args = parser.parse_args(argv)
    from resbackbones.listing import catalog_rows, format_catalog_table

    return _print_catalog(lambda: format_catalog_table(catalog_rows(args.names,
                                                                    args.input_size)))


def catalog_show_main(argv: Sequence[str]) -> int:
    """``show NAME``: the details of one architecture (catalog name or ``timm:<model>``)."""
    import argparse

    parser = argparse.ArgumentParser(description="Details of one architecture.")
    parser.add_argument("name", help="catalog name or timm:<model>")
    args = parser.parse_args(argv)
    from resbackbones.listing import describe_entry

    return _print_catalog(lambda: describe_entry(args.name))


def _print_catalog(render: Callable[[], str]) -> int:
    from detectron2.utils.logger import setup_logger

    import resbackbones  # noqa: F401  (registers the builders)

    setup_logger(name="resbackbones", abbrev_name="rb")
    try:
        print(render())
    except KeyError as error:  # an unknown architecture: the message has the close names
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 2
    return 0


def configs_main(argv: Sequence[str]) -> int:
    """``configs [TEXT] [--paths]``: the packaged configs, the names ``--config-file`` takes."""
    import argparse

    from resbackbones.model_zoo_files import config_root, list_configs

    parser = argparse.ArgumentParser(
        description="The configs shipped in the package. Each name works wherever a config "
                    "file does (--config-file NAME, resbackbones.model_zoo.get_config(NAME)).")
    parser.add_argument("contains", nargs="?", default="",
                        help="only names containing this text (case-insensitive)")
    parser.add_argument("--paths", action="store_true", help="print file paths, not names")
    args = parser.parse_args(argv)
    names = list_configs(args.contains)
    if not names:
        print(f"error: no packaged config name contains {args.contains!r} (under "
              f"{config_root()})", file=sys.stderr)
        return 1
    for name in names:
        print(config_root() / name if args.paths else name)
    return 0


def demo_main(argv: Sequence[str]) -> int:
    """``demo``: a Detectron2 model (:mod:`resbackbones.demo.batch`) or, with ``--onnx``, an ONNX
    export (:mod:`resbackbones.deploy.onnx_demo`, which needs neither Detectron2 nor PyTorch) on
    images, folders, globs and videos."""
    argv = list(argv)
    onnx = any(arg == "--onnx" or arg.startswith("--onnx=") for arg in argv)
    target = "resbackbones.deploy.onnx_demo:main" if onnx else "resbackbones.demo.batch:main"
    return _load("demo", target)(argv)


@dataclass(frozen=True)
class Command:
    """One ``python -m resbackbones`` command.

    Attributes:
        target: ``"module:function"`` (imported when the command runs) or the function itself;
            the function takes the arguments after the command and returns an exit status
            (anything else, such as ``None``, counts as 0).
        summary: its line in ``--help``.
    """

    target: Union[str, CommandFunction]
    summary: str


COMMANDS: Dict[str, Command] = {
    "list": Command(catalog_list_main, "every architecture of the catalog, parameters, GFLOPs"),
    "show": Command(catalog_show_main, "details of one architecture (catalog name or timm:...)"),
    "configs": Command(configs_main, "the packaged configs: names that --config-file accepts"),
    "train": Command("resbackbones.engine.launch:run",
                     "train or evaluate a config (Detectron2's flags; tools/train_net.py)"),
    "quickstart": Command("resbackbones.engine.cli:quickstart_main",
                          "synthetic data, a small Mask R-CNN trained from scratch, AP, plots"),
    "demo": Command(demo_main, "a model or ONNX export on images/folders/videos (tools/demo.py)"),
    "web-demo": Command("resbackbones.demo.serve:main",
                        "serve models as a Gradio page (tools/gradio_demo.py)"),
    "export": Command("resbackbones.deploy.export_cli:main",
                      "export a detector to TorchScript or ONNX (tools/export_model.py)"),
    "benchmark": Command("resbackbones.benchmark.cli:main",
                         "speed against Detectron2's built-in ResNet (tools/benchmark.py)"),
    "validate-dataset": Command("resbackbones.data.cli:validate_dataset_main",
                                "check a COCO-format dataset before training on it"),
    "make-synthetic-coco": Command("resbackbones.data.cli:make_synthetic_coco_main",
                                   "write the synthetic shapes dataset in COCO layout"),
    "convert-weights": Command("resbackbones.checkpoint.convert:main",
                               "convert timm/torchvision/Caffe2/Detectron2 checkpoints"),
    "plot-metrics": Command("resbackbones.engine.cli:plot_metrics_main",
                            "loss and AP curves of a training OUTPUT_DIR"),
    "doctor": Command("resbackbones.env:doctor_main",
                      "check this environment (torch, Detectron2, the package) and say what to fix"),
    "install-detectron2": Command("resbackbones.installer:main",
                                  "build and install Detectron2 v0.6 for this Python"),
}


class CommandUnavailableError(RuntimeError):
    """A command's module or function cannot be loaded (missing, or a dependency is)."""


def _load(name: str, target: Union[str, CommandFunction]) -> CommandFunction:
    if callable(target):
        return target
    module_name, _, function_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        missing = getattr(error, "name", None) == module_name
        raise CommandUnavailableError(
            f"command {name!r} needs {module_name}, which "
            + ("this installation of resbackbones does not have" if missing
               else f"fails to import: {error}")) from error
    function = getattr(module, function_name, None)
    if not callable(function):
        raise CommandUnavailableError(
            f"command {name!r} needs {target}, which this installation of resbackbones does "
            "not have")
    return function


def _program() -> str:
    """How the user started us: ``python -m resbackbones`` or a console script's name."""
    started_as = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m resbackbones" if started_as in ("", "__main__.py", "-c") else started_as


def format_help(program: str = "python -m resbackbones") -> str:
    """The top-level ``--help``: usage and one line per command."""
    width = max(len(name) for name in COMMANDS) + 2
    lines = [f"usage: {program} <command> [options]   ({program} <command> --help: its options)",
             "", "The ResNet family as Detectron2 backbones: configs, training, demo, export.",
             "", "commands:"]
    lines += [f"  {name:<{width}}{command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; returns its exit status (2 for an unknown command).

    Args:
        argv: the command and its arguments; default ``sys.argv[1:]`` (then ``sys.argv[0]``
            becomes ``"python -m resbackbones <command>"``, so the command's own usage lines
            and examples name what the user typed).
    """
    program = _program()
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(format_help(program), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from resbackbones import __version__

        print(f"resbackbones {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, list(COMMANDS), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        print(f"error: unknown command {name!r}.{hint} Valid: {', '.join(COMMANDS)} "
              f"({program} --help).", file=sys.stderr)
        return 2
    try:
        function = _load(name, COMMANDS[name].target)
    except CommandUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if from_command_line:
        sys.argv = [f"{program} {name}", *rest]
    status = function(rest)
    # An exit status, or None; the web demo returns what Gradio's launch returns (a URL).
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
