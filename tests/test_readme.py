"""The README is a front door that works: its quick starts run as written, it stays short, and
no link in it or in docs/ points at a missing file or heading.

The quick-start blocks are run in order in one temporary working directory (the second reads
the dataset the first collected), each as its own script, exactly as a user would paste them.
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 200
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")


def python_blocks(text: str) -> list[str]:
    """The fenced ```python blocks of a markdown text, in order."""
    return [body for lang, body in FENCE.findall(text) if lang == "python"]


def markdown_files() -> list[Path]:
    """README.md and every markdown page under docs/ (benchmarks/README.md too)."""
    return [README, ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces
    to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file (repeats get GitHub's -1, -2 suffixes)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in text.splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Run the README's Python blocks in order in a fresh folder; their namespaces."""
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 3, "the README has three quick starts: data, trajectories, images"
    work = tmp_path_factory.mktemp("readme")
    here, threads = Path.cwd(), torch.get_num_threads()
    os.chdir(work)
    torch.set_num_threads(1)   # as the console scripts: spinning threads stall on shared cores
    try:
        namespaces = []
        for i, code in enumerate(blocks):
            namespace: dict = {"__name__": f"readme_block_{i}"}
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
            namespaces.append(namespace)
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return [dict(ns, _cwd=work) for ns in namespaces]


def test_the_dataset_quick_start_collects_a_dataset(quick_start):
    ns = quick_start[0]
    assert (ns["_cwd"] / "runs" / "hand" / "data" / "main_data.hdf5").is_file()
    states, actions = ns["states"], ns["actions"]
    assert states.shape[1:] == (41, 31) and actions.shape[1:] == (40, 20)
    assert len(states) == len(actions) > 0


def test_the_trajectory_quick_start_trains_and_predicts(quick_start):
    ns = quick_start[1]
    assert (ns["_cwd"] / "runs" / "ebm" / "model.pt").is_file()
    assert ns["pred"].shape == (4, 8, 20, 31)
    assert ns["pred"].dtype.kind == "f" and (ns["pred"] == ns["pred"]).all()   # finite, no NaN


def test_the_image_quick_start_trains_and_samples(quick_start):
    ns = quick_start[2]
    images, labels = ns["images"], ns["labels"]
    assert tuple(images.shape) == (16, 1, 8, 8)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert labels.tolist() == [i % 10 for i in range(16)]


def test_the_readme_stays_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_the_readme_keeps_the_ci_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci in README.read_text(encoding="utf-8")


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    missing = []
    text = CODE.sub("", FENCE.sub("", page.read_text(encoding="utf-8")))   # code is not links
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):      # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            missing.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            missing.append(f"{target} (no such heading)")
    assert not missing, f"{page.relative_to(ROOT)}: broken links {missing}"
