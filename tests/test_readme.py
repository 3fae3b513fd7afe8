"""The README (and docs/*.md) as a new user reads them: everything they name must exist.

Every repository path (``configs/...``, ``tools/...``, ``tests/x.py::test_name``), every
``make TARGET``, every ``python -m resbackbones COMMAND``, every packaged config name, every
``resbackbones.*`` module or attribute, every config key and registered builder, and every link
(with its ``#anchor``) must resolve. The Detectron2 model-zoo table must map names that exist in
Detectron2's model zoo to twins that say so; the speed ratios the README quotes must be in a
BENCHMARKS.md section measured by the current benchmark; docs/detectron2-install.md's rewrite
table must be the installer's. Each check is a function of the text, so that the test names
what is wrong, page by page.
"""
from __future__ import annotations

import importlib
import re
import unicodedata
from pathlib import Path
from typing import Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README] + DOCS
PAGE_IDS = [page.relative_to(REPO).as_posix() for page in PAGES]

# What a page may name as a repository path: these folders, and these top-level files.
PATH_FOLDERS = ("configs", "tools", "docs", "resbackbones", "tests", "projects", ".ci")
TOP_LEVEL_FILES = ("LICENSE", "CITATION.bib", "ARCHITECTURE.md", "BENCHMARKS.md", "Makefile",
                   "setup.cfg", "pyproject.toml", "benchmark_scaling_cpu.png")
# A path starts where no word, path or URL character comes before it, so that
# "/path/to/detectron2/tools/x.py", "~/.cache/resbackbones/..." and "detectron2://..." are not
# taken for paths of this repository.
_START = r"(?<![\w/.~$:+-])"
PATH_PATTERN = re.compile(
    _START + r"((?:" + "|".join(re.escape(folder) for folder in PATH_FOLDERS) +
    r")/[\w.*/-]*(?:::\w+)?|(?:" + "|".join(re.escape(name) for name in TOP_LEVEL_FILES) +
    r")(?![\w.]))")
# `make TARGET` where a command starts (a line, a span, after && or ;), after any VAR=value.
MAKE_PATTERN = re.compile(r"(?:^|&&|;)\s*(?:[A-Z_]+=\S+\s+)*make\s+(?:[A-Z_]+=\S+\s+)*"
                          r"([a-z][\w-]*)", re.M)
COMMAND_PATTERN = re.compile(r"python -m resbackbones\s+([a-z][\w-]*)")
MODULE_PATTERN = re.compile(r"(?<![\w/.+-])(resbackbones(?:\.[A-Za-z_]\w*)+)")
KEY_PATTERN = re.compile(r"(?<![\w.])((?:MODEL|SOLVER|INPUT|DATASETS|DATALOADER|TEST|"
                         r"DATA_VALIDATION)(?:\.[A-Z][A-Z0-9_]*)+)")
BUILDER_PATTERN = re.compile(r"\b(build_resbackbone\w*)")
ARCH_PATTERN = re.compile(r"(?:\bARCH:?\s+\"?|entry\.name=)([a-z]\w*)")
RATIO_PATTERN = re.compile(r"(?<![\w.])(\d+\.\d+)x\b")
LINK_PATTERN = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE_PATTERN = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
INLINE_CODE_PATTERN = re.compile(r"`([^`\n]+)`")

TWIN_TABLE_BEGIN = "<!-- detectron2 model-zoo names: tests/test_readme.py checks each column -->"
TWIN_TABLE_END = "<!-- end of detectron2 model-zoo names -->"
REWRITES_PAGE = REPO / "docs" / "detectron2-install.md"


def _code(text: str) -> List[str]:
    """The code a page shows: fenced blocks and inline spans (where commands are written)."""
    blocks = [match.group(2) for match in FENCE_PATTERN.finditer(text)]
    prose = FENCE_PATTERN.sub("", text)
    return blocks + INLINE_CODE_PATTERN.findall(prose)


def _without_twin_table(text: str) -> str:
    """The text without the Detectron2 model-zoo table, whose first column holds Detectron2's
    names (checked against Detectron2 by test_detectron2_model_zoo_table)."""
    if TWIN_TABLE_BEGIN not in text:
        return text
    start = text.index(TWIN_TABLE_BEGIN)
    return text[:start] + text[text.index(TWIN_TABLE_END, start):]


def _config_folders() -> List[str]:
    return sorted(path.name for path in (REPO / "configs").iterdir() if path.is_dir())


def missing_paths(text: str) -> List[str]:
    """Repository paths (files, folders, globs, ``file.py::test_name``) that do not exist."""
    missing = []
    for raw in sorted(set(PATH_PATTERN.findall(text))):
        name = raw.rstrip(".,;:)")
        path, _, function = name.partition("::")
        if "*" in path:
            found = bool(list(REPO.glob(path)))
        else:
            found = (REPO / path).exists()
        if found and function:
            found = re.search(rf"^(?:async )?def {re.escape(function)}\(",
                              (REPO / path).read_text(), re.M) is not None
        if not found:
            missing.append(name)
    return missing


def makefile_targets() -> Set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M))


def _without_comments(code: str) -> str:
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in code.splitlines())


def unknown_make_targets(text: str) -> List[str]:
    targets = makefile_targets()
    named = {target for code in _code(text)
             for target in MAKE_PATTERN.findall(_without_comments(code))}
    return sorted(named - targets)


def unknown_commands(text: str) -> List[str]:
    from resbackbones.__main__ import COMMANDS

    named = {command for code in _code(text) for command in COMMAND_PATTERN.findall(code)}
    return sorted(named - set(COMMANDS))


def unknown_config_names(text: str) -> List[str]:
    """Packaged config names (``COCO-Detection/...yaml``, not prefixed by ``configs/``) that
    ``resbackbones.model_zoo_files.get_config_file`` does not resolve."""
    from resbackbones.model_zoo_files import ConfigNotFoundError, get_config_file

    folders = "|".join(re.escape(folder) for folder in _config_folders())
    pattern = re.compile(rf"(?<![\w/.-])((?:{folders})/[\w.-]+\.(?:yaml|py))\b")
    unknown = []
    for name in sorted(set(pattern.findall(_without_twin_table(text)))):
        try:
            get_config_file(name)
        except ConfigNotFoundError:
            unknown.append(name)
    return unknown


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:end]))
        except ImportError:
            continue
        for attribute in parts[end:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def unknown_modules(text: str) -> List[str]:
    """``resbackbones.x.y`` names (modules, functions, classes) that do not exist."""
    return sorted(name for name in set(MODULE_PATTERN.findall(text)) if not _resolves(name))


def unknown_config_keys(text: str) -> List[str]:
    """Config keys that neither Detectron2's defaults with the project's keys have nor the
    project's table of renamed keys knows (an old name the docs may mention as such)."""
    from resbackbones.config import RENAMED_KEYS, build_config

    cfg = build_config("")
    unknown = []
    for key in sorted(set(KEY_PATTERN.findall(text))):
        node = cfg
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
            if node is None:
                break
        if node is None and key not in RENAMED_KEYS:
            unknown.append(key)
    return unknown


def unknown_builders_and_architectures(text: str) -> List[str]:
    from detectron2.modeling import BACKBONE_REGISTRY

    import resbackbones  # noqa: F401  (registers the builders)
    from resbackbones.catalog import catalog_names

    registered = {name for name, _ in BACKBONE_REGISTRY}
    unknown = [name for name in sorted(set(BUILDER_PATTERN.findall(text)))
               if name not in registered]
    unknown += [name for name in sorted(set(ARCH_PATTERN.findall(text)))
                if name not in catalog_names()]
    return unknown


def github_anchor(heading: str) -> str:
    """The ``#anchor`` GitHub gives a Markdown heading."""
    text = unicodedata.normalize("NFKC", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors_of_text(text: str) -> Set[str]:
    text = FENCE_PATTERN.sub("", text)
    return {github_anchor(heading) for heading in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def anchors(page: Path) -> Set[str]:
    return _anchors_of_text(page.read_text())


def broken_links(page: Path, text: str) -> List[str]:
    """Relative links and images whose file (or ``#anchor`` in it) does not exist."""
    broken = []
    for target in sorted(set(LINK_PATTERN.findall(FENCE_PATTERN.sub("", text)))):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in (
                anchors(linked) if path else _anchors_of_text(text)):
            broken.append(target)
    return broken


def benchmark_sections() -> Iterator[Tuple[str, str, str]]:
    """``(name, heading, body)`` of each BENCHMARKS.md section."""
    text = (REPO / "BENCHMARKS.md").read_text()
    for match in re.finditer(r"<!-- BEGIN (\S+) -->\n(.*?)<!-- END \1 -->", text, re.S):
        body = match.group(2)
        heading = next((line for line in body.splitlines() if line.startswith("## ")), "")
        yield match.group(1), heading, body


def unsourced_ratios(text: str) -> List[str]:
    """Speed ratios (``1.24x``) quoted in ``text`` that no BENCHMARKS.md section of the current
    benchmark holds. Sections whose heading says "ISA not recorded" predate it (ISA recording and
    the per-machine Winograd choice came together): they are records, not current figures."""
    current = " ".join(body for _, heading, body in benchmark_sections()
                       if "ISA not recorded" not in heading)
    return sorted(f"{ratio}x" for ratio in set(RATIO_PATTERN.findall(text))
                  if f"{ratio}x" not in current)


def twin_table_rows(text: str) -> List[List[str]]:
    start = text.index(TWIN_TABLE_BEGIN)
    table = text[start:text.index(TWIN_TABLE_END, start)]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]


def twin_table_errors(text: str) -> List[str]:
    from resbackbones.compat import detectron2_config_file
    from resbackbones.model_zoo_files import ConfigNotFoundError, get_config_file

    errors, twins = [], set()
    for detectron2_name, twin, ours in twin_table_rows(text):
        try:
            detectron2_config_file(detectron2_name)
        except FileNotFoundError:
            errors.append(f"{detectron2_name}: not in Detectron2's model zoo")
        for name, is_twin in ((twin, True), (ours, False)):
            if name == "—":
                continue
            try:
                path = get_config_file(name)
            except ConfigNotFoundError:
                errors.append(f"{name}: not a packaged config")
                continue
            if is_twin:
                twins.add(name)
                first_line = Path(path).read_text().splitlines()[0]
                expected = f"# Twin of Detectron2's model-zoo config {detectron2_name}:"
                if first_line != expected:
                    errors.append(f"{name} is not the twin of {detectron2_name}: {first_line!r}")
    all_twins = {f"Detectron2-ModelZoo/{path.name}"
                 for path in (REPO / "configs" / "Detectron2-ModelZoo").glob("*.yaml")
                 if not path.name.startswith("Base-")}
    errors += [f"{name}: a twin config missing from the table"
               for name in sorted(all_twins - twins)]
    return errors


@pytest.fixture(scope="module", params=PAGES, ids=PAGE_IDS)
def page(request) -> Tuple[Path, str]:
    return request.param, request.param.read_text()


def test_every_path_a_page_names_exists(page):
    path, text = page
    assert missing_paths(text) == [], f"{path.name} names paths that do not exist"


def test_every_make_target_a_page_names_is_in_the_makefile(page):
    path, text = page
    assert unknown_make_targets(text) == [], f"{path.name}: not targets of the Makefile"


def test_every_command_a_page_names_is_a_command(page):
    path, text = page
    assert unknown_commands(text) == [], f"{path.name}: not `python -m resbackbones` commands"


def test_every_packaged_config_name_resolves(page):
    path, text = page
    assert unknown_config_names(text) == [], f"{path.name}: not packaged config names"


def test_every_module_and_attribute_exists(page):
    path, text = page
    assert unknown_modules(text) == [], f"{path.name}: no such module or attribute"


def test_every_config_key_exists(page):
    path, text = page
    assert unknown_config_keys(text) == [], f"{path.name}: no such config key"


def test_every_builder_and_architecture_exists(page):
    path, text = page
    assert unknown_builders_and_architectures(text) == [], f"{path.name}: not registered / " \
                                                            "not in the catalog"


def test_every_link_and_anchor_exists(page):
    path, text = page
    assert broken_links(path, text) == [], f"{path.name}: broken links"


def test_speed_ratios_come_from_a_current_benchmarks_section():
    assert unsourced_ratios(README.read_text()) == []


def test_detectron2_model_zoo_table():
    """Column 1 is in Detectron2's model zoo, column 2 is its twin (the twin's first line says
    so), column 3 is a packaged config; every twin config is in the table."""
    text = README.read_text()
    assert len(twin_table_rows(text)) >= 10
    assert twin_table_errors(text) == []


def test_python_examples_run():
    """The README's ```python blocks build configs only: each runs as written."""
    blocks = [match.group(2) for match in FENCE_PATTERN.finditer(README.read_text())
              if match.group(1) == "python"]
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102 (our own README)


def test_rewrite_table_is_the_installers():
    """docs/detectron2-install.md lists every source rewrite, as `--list-rewrites` prints them
    (moved there from the README)."""
    from resbackbones import installer

    assert installer.list_rewrites_markdown() in REWRITES_PAGE.read_text()


def test_citation_names_this_version():
    import resbackbones

    for name in ("README.md", "CITATION.bib"):
        text = (REPO / name).read_text()
        assert f"version = {{{resbackbones.__version__}}}" in text, name


def test_readme_keeps_the_generated_model_table_and_the_reliability_slot():
    from resbackbones import generate

    text = README.read_text()
    assert generate.readme_model_table(text)
    assert "<!-- reliability-table -->" in text


def test_license_is_apache_2_as_setup_cfg_says():
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "Copyright 2026 The resbackbones authors" in license_text
    assert re.search(r"^license = Apache-2.0$", (REPO / "setup.cfg").read_text(), re.M)


def test_the_checks_catch_what_issue_24_found():
    """Each wrong claim a new user met in the README of issue #24 fails these checks."""
    assert missing_paths('cfg.merge_from_file("configs/COCO-InstanceSegmentation/'
                         'mask_rcnn_R_50_FPN_3x.yaml")') == [
        "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"]
    assert missing_paths("`tests/test_readme.py::test_no_such_test`") == [
        "tests/test_readme.py::test_no_such_test"]
    assert missing_paths("`/path/to/detectron2/tools/lazyconfig_train_net.py`") == []
    # 1.50x and 1.11x are in no section; 1.57x only in one that predates the current benchmark.
    assert unsourced_ratios("gave 1.50x; Intel 1.11x; AMD EPYC **1.57x**") == [
        "1.11x", "1.50x", "1.57x"]
    assert unknown_make_targets("```bash\nmake quickstart   # make the data\nmake tests\n```") \
        == ["tests"]
    assert unknown_commands("`python -m resbackbones trian`") == ["trian"]
    assert unknown_config_names("`COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml`") == [
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"]
    assert broken_links(README, "[x](docs/no-such-page.md) [y](#no-such-section)") == [
        "#no-such-section", "docs/no-such-page.md"]
