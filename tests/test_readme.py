"""Every code block of README.md runs as pasted on a fresh clone after the Quickstart.

Blocks are taken from the README itself, in order, and run in one scratch directory laid out like a clone
after ``make demo`` (``cpp/`` and ``.venv`` linked in, the environment's ``bin`` first on ``PATH``, this
checkout first on ``PYTHONPATH``): ``bash`` blocks through ``bash -e -o pipefail``, ``python`` blocks with
this interpreter. Later blocks may use files earlier ones wrote, as a reader's would.

An HTML comment on the line before a block says how it is tested:

* none: runs in the fast suite (keep these short: together well under a minute);
* ``<!-- readme-test: slow -->``: runs only in the full suite (exports, builds, benchmarks);
* ``<!-- readme-test: skip (reason) -->``: never runs; the reason is shown in pytest's summary. Only for
  blocks a test cannot run (the Quickstart itself, hardware this machine lacks, a file only the user has).

````text```` blocks (synopses, directory listings, output) are not code and are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNABLE = {"bash": "bash", "sh": "bash", "shell": "bash", "console": "bash", "python": "python", "py": "python"}
MARKER = re.compile(r"^<!--\s*readme-test:\s*(?P<mode>skip|slow)\s*(?:\((?P<reason>.*)\))?\s*-->$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    mode: str  # "fast", "slow", "skip" or "text"
    reason: str = ""

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang or 'plain'}"


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text with their test mode (see the module docstring)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, lang = i, fence.group("lang").lower()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md line {start + 1}: unclosed code block")
        previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous)
        if lang not in RUNNABLE:
            mode, reason = "text", ""
        elif marker:
            mode, reason = marker.group("mode"), (marker.group("reason") or "").strip()
        else:
            mode, reason = "fast", ""
        blocks.append(Block(start + 1, lang, "\n".join(lines[start + 1:end]) + "\n", mode, reason))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())


def _param(block: Block) -> object:
    marks: list[pytest.MarkDecorator] = []
    if block.mode == "slow":
        marks.append(pytest.mark.slow)
    elif block.mode == "skip":
        marks.append(pytest.mark.skip(reason=f"README.md line {block.line}: {block.reason}"))
    return pytest.param(block, id=block.id, marks=marks)


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that looks like a fresh clone after ``make demo``, without writing into the checkout."""
    work = tmp_path_factory.mktemp("readme-clone")
    (work / "cpp").symlink_to(ROOT / "cpp", target_is_directory=True)
    (work / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return work


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "100"
    return env


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS if b.mode != "text"])
def test_readme_block_runs_as_pasted(block: Block, clone: Path) -> None:
    if RUNNABLE[block.lang] == "bash":
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.code]
    else:
        cmd = [sys.executable, "-c", block.code]
    res = subprocess.run(cmd, cwd=clone, env=_env(), capture_output=True, text=True,
                         timeout=600 if block.mode == "fast" else 3600)
    assert res.returncode == 0, (f"README.md line {block.line} ({block.lang}) failed with exit code "
                                 f"{res.returncode}:\n{block.code}\n--- stdout\n{res.stdout[-3000:]}\n"
                                 f"--- stderr\n{res.stderr[-3000:]}")


def test_every_block_is_run_or_says_why_not() -> None:
    languages = {b.lang for b in BLOCKS}
    assert languages <= set(RUNNABLE) | {"text"}, f"blocks must be bash, python or text: {languages}"
    assert all(b.reason for b in BLOCKS if b.mode == "skip"), "a skipped block must give its reason"
    assert sum(b.mode == "fast" for b in BLOCKS) >= 2  # the fast suite does exercise the README


def test_quickstart_is_exactly_make_demo_and_make_test() -> None:
    text = README.read_text()
    section = text[text.index("## Quickstart"):text.index("\n## ", text.index("## Quickstart") + 1)]
    quickstart = next(b for b in readme_blocks(section) if b.mode != "text")
    commands = [line.split("#")[0].strip() for line in quickstart.code.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_links_resolve_inside_the_repository() -> None:
    text = README.read_text()
    assert "../shared" not in text and "shared/specs" not in text  # not part of a clone
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README links to {target}, which is not in the repository"
    for page in sorted((ROOT / "docs").rglob("*.md")):
        body = page.read_text()
        assert "shared/specs" not in body and "shared/papers" not in body, page
        for target in re.findall(r"\]\(([^)#]+)\)", body):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"


def test_block_parser_reads_markers() -> None:
    text = ("intro\n\n```bash\nedgevit list\n```\n<!-- readme-test: slow -->\n```python\nprint(1)\n```\n"
            "<!-- readme-test: skip (needs an NVIDIA GPU) -->\n\n```bash\nnvidia-smi\n```\n```text\nx | y\n```\n")
    blocks = readme_blocks(text)
    assert [(b.line, b.lang, b.mode, b.reason) for b in blocks] == [
        (3, "bash", "fast", ""), (7, "python", "slow", ""), (12, "bash", "skip", "needs an NVIDIA GPU"),
        (15, "text", "text", "")]
    assert blocks[0].code == "edgevit list\n"
