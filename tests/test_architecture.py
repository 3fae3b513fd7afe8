"""The package's structure (ARCHITECTURE.md): one-way layers, imports without side effects, one
owner per config value, and the generated README model table."""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "resbackbones"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter with the repository's contract on the package found under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), str(REPO / "setup.cfg"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_layers_import_one_way():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout  # layers, and the Detectron2-free runner


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract is not vacuous: the catalog importing the engine (a cycle in the making) is
    reported with both module names."""
    copy = tmp_path / "resbackbones"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    catalog = copy / "catalog.py"
    catalog.write_text(catalog.read_text() + "\nimport resbackbones.engine.trainer  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "resbackbones.catalog -> resbackbones.engine.trainer" in result.stdout


def _imported_modules(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_the_library_never_imports_projects_or_tools():
    project_packages = {p.name for p in (REPO / "projects").glob("*/*")
                        if (p / "__init__.py").is_file()}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if top in {"projects", "tools"} | project_packages:
                offenders.append(f"{path.relative_to(REPO)} imports {module}")
    assert not offenders, offenders


def test_tools_do_not_edit_sys_path():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "tools").rglob("*.py")
                 if "sys.path.insert" in p.read_text() or "sys.path.append" in p.read_text()]
    assert not offenders, f"tools that edit sys.path (the package is installed): {offenders}"


def test_tests_call_the_library_not_tool_files():
    """Tools are thin command lines over library functions; tests import those functions (or
    run a tool as a user would, in a subprocess). The installer is the exception: it is a
    stdlib-only script that must run before the package and Detectron2 are installed."""
    offenders = []
    for path in list((REPO / "tests").rglob("test_*.py")) + list((REPO / "tests").glob("*.py")):
        text = path.read_text()
        if "spec_from_file_location" in text and "install_detectron2" not in text:
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"tests loading tools/*.py by path: {sorted(set(offenders))}"


def test_import_registers_models_only():
    """A fresh interpreter: `import resbackbones` registers the builders and meta-architectures,
    no data set, and leaves Detectron2's default config alone."""
    code = (
        "from detectron2.data import DatasetCatalog\n"
        "before = set(DatasetCatalog.list())\n"
        "import resbackbones\n"
        "from detectron2.config import get_cfg\n"
        "from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY\n"
        "assert set(DatasetCatalog.list()) == before, set(DatasetCatalog.list()) - before\n"
        "assert 'RESBACKBONE' not in get_cfg().MODEL\n"
        "assert BACKBONE_REGISTRY.get('build_resbackbone_fpn_backbone')\n"
        "assert META_ARCH_REGISTRY.get('ResBackboneRCNN')\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


_BLOCK_DETECTRON2 = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'detectron2' or name.startswith('detectron2.'):\n"
    "            raise ImportError('detectron2 blocked by the test')\n"
    "sys.meta_path.insert(0, Block())\n")


def test_without_detectron2_the_import_works_and_says_what_is_missing():
    code = _BLOCK_DETECTRON2 + (
        "import resbackbones\n"
        "try:\n"
        "    import resbackbones.modeling\n"
        "except ImportError as error:\n"
        "    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resbackbones.modeling needs Detectron2" in result.stdout
    assert "python -m resbackbones install-detectron2" in result.stdout


def test_config_values_have_one_owner_and_one_message():
    """The constructor and validate_config word a bad value identically (they ask the owner)."""
    from detectron2.config import get_cfg

    from resbackbones.catalog import get_entry
    from resbackbones.config import add_resbackbone_config, validate_config
    from resbackbones.errors import ConfigError
    from resbackbones.modeling.fpn import ResBackboneFPN  # noqa: F401  (import order only)
    from resbackbones.modeling.norms import convert_norm
    from resbackbones.modeling.timm_backbone import TimmBackbone

    cases = [("NORM", "LayerNorm", lambda v: convert_norm(None, v)),
             ("CHANNELS_LAST", "yes", lambda v: TimmBackbone(get_entry("resnet18"),
                                                             channels_last=v)),
             ("OUT_FEATURES", ["res6"], lambda v: TimmBackbone(get_entry("resnet18"),
                                                              out_features=v))]
    for key, value, construct in cases:
        cfg = add_resbackbone_config(get_cfg())
        cfg.MODEL.RESBACKBONE[key] = value
        with pytest.raises(ConfigError) as from_config:
            validate_config(cfg)
        with pytest.raises(ConfigError) as from_constructor:
            construct(value)
        assert str(from_config.value) == str(from_constructor.value), key
        assert f"MODEL.RESBACKBONE.{key}" in str(from_config.value)


def test_readme_model_table_matches_the_catalog():
    """Every catalog entry has its row, in catalog order, with the catalog's family, tag and
    channels and the parameter counts of the network built from it (meta device: shapes only).
    GFLOPs need real forward passes (minutes for the whole catalog): ResNet-18's are checked in
    test_readme_gflops_are_measured."""
    import torch
    from detectron2.modeling import build_backbone

    from resbackbones import generate
    from resbackbones.catalog import catalog_names
    from resbackbones.config import build_config

    table = generate.readme_model_table((REPO / "README.md").read_text())
    rows = [line for line in table.splitlines()[2:]]
    in_readme = {row.split("|")[1].strip(): row for row in rows}
    assert list(in_readme) == catalog_names()

    def parameters(name):
        cfg = build_config("", ["MODEL.BACKBONE.NAME", "build_resbackbone_fpn_backbone",
                                "MODEL.RESBACKBONE.ARCH", name, "MODEL.RESBACKBONE.NORM", "BN",
                                "MODEL.BACKBONE.FREEZE_AT", 0])
        with torch.device("meta"):
            model = build_backbone(cfg)
        bottom_up = sum(p.numel() for p in model.bottom_up.parameters())
        total = sum(p.numel() for p in model.parameters())
        cells = in_readme[name].split("|")
        return bottom_up, total, float(cells[7]), float(cells[8])

    expected = generate.render_readme_model_table(parameters)
    assert expected == table, "README model table is stale: run tools/generate_configs.py"


@pytest.mark.slow
def test_readme_gflops_are_measured():
    from resbackbones import generate
    from resbackbones.listing import measure_architecture

    table = generate.readme_model_table((REPO / "README.md").read_text())
    row = next(line for line in table.splitlines() if line.startswith("| resnet18 |"))
    cost = measure_architecture("resnet18")
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[7:9] == [f"{cost.bottom_up_gflops:.1f}", f"{cost.total_gflops:.1f}"]
