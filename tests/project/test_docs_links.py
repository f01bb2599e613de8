"""Every relative Markdown link in README.md and docs/*.md resolves: the target file (or folder) exists,
and an anchor into a Markdown file names one of its headings (GitHub's slug) or an explicit
`<a id="...">`. Links to http(s)/mailto and anchor-only links within the same file are checked only for
the anchor; links inside fenced code and inline code spans are not links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})")
CODE_SPAN_RE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
LINK_RE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING_RE = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
EXPLICIT_ID_RE = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def _prose(text: str) -> str:
    """The text with fenced code blocks blanked (line numbers kept)."""
    out, fence = [], None
    for line in text.split("\n"):
        m = FENCE_RE.match(line)
        if fence is None and m:
            fence = m.group(1)
            out.append("")
        elif fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    found, seen = set(EXPLICIT_ID_RE.findall(text)), {}
    for line in _prose(text).split("\n"):
        m = HEADING_RE.match(line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    prose = CODE_SPAN_RE.sub(
        lambda m: re.sub(r"[^\n]", " ", m.group(0)), _prose(path.read_text(encoding="utf-8"))
    )
    return [(prose.count("\n", 0, m.start()) + 1, m.group(1)) for m in LINK_RE.finditer(prose)]


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def problems(path: Path) -> list[str]:
    found = []
    for line, target in links(path):
        where = f"{_shown(path)}:{line}: ({target})"
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            found.append(f"{where}: {_shown(dest)} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            found.append(f"{where}: no heading or <a id> {anchor!r} in {_shown(dest)}")
    return found


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_relative_links_resolve(path):
    found = problems(path)
    assert not found, "broken links:\n" + "\n".join(found)


def test_the_checker_sees_links(tmp_path):
    (tmp_path / "there.md").write_text(
        '# A title: with `code`, punctuation!\n\n<a id="x"></a>\n## Twice\n## Twice\n'
    )
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](there.md#a-title-with-code-punctuation) [ok](there.md#x) [ok](there.md#twice-1)\n"
        "[missing](nowhere.md) [bad anchor](there.md#nope) [web](https://example.org/x) [self](#top)\n"
        "`[not a link](nowhere.md)`\n\n```\n[not a link](nowhere.md)\n```\n\n# Top\n"
    )
    assert [t for _, t in links(doc)] == [
        "there.md#a-title-with-code-punctuation",
        "there.md#x",
        "there.md#twice-1",
        "nowhere.md",
        "there.md#nope",
        "https://example.org/x",
        "#top",
    ]
    found = problems(doc)
    assert len(found) == 2, found
    assert "nowhere.md does not exist" in found[0] and "'nope'" in found[1]


# Repository paths written as inline code in the README and the manual (`shaping/rfn.py` is read under
# quark_lightning/): they name files a reader will open, so they must exist too. design.md and
# paper-interpretation.md are left to their own checks.
CODE_PATH_DOCS = [REPO / "README.md", REPO / "docs" / "manual.md"]
SUBPACKAGES = "cli|config|data|evaluation|grpo|infra|judges|loop|matrix|models|reward_model|rollout|scorers|shaping|stages"
CODE_PATH_RE = re.compile(
    rf"`((?:quark_lightning|callbacks|tests|scripts|benchmarks|conf)/[\w./-]+|(?:{SUBPACKAGES})/[\w./-]+\.py)`"
)
NOT_IN_A_CHECKOUT = {
    "benchmarks/results/gpu.md": "written by scripts/gpu_check.sh on a GPU machine",
    "quark_lightning/conf/": "the copy of conf/ that only a built wheel has",
}


@pytest.mark.parametrize("path", CODE_PATH_DOCS, ids=[str(p.relative_to(REPO)) for p in CODE_PATH_DOCS])
def test_code_paths_exist(path):
    text = _prose(path.read_text(encoding="utf-8"))
    missing = []
    for m in CODE_PATH_RE.finditer(text):
        name = m.group(1).rstrip(".")
        if name in NOT_IN_A_CHECKOUT or (REPO / name).exists() or (REPO / "quark_lightning" / name).exists():
            continue
        missing.append(f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}: `{name}`")
    assert not missing, "paths that do not exist (moved or renamed?):\n" + "\n".join(missing)
