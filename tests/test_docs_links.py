"""The README and docs/*.md hold together: every relative link and image resolves to a file,
every ``#anchor`` into a Markdown file names one of its headings (GitHub's slugs), and the
README stays a front door (at most 300 lines). The checker itself is tested on a broken page."""
import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 300

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), the target optionally in <...> and followed by a "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)"
                         r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"""<a\s[^>]*(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def markdown_files():
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text):
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield number, INLINE_CODE.sub(lambda match: " " * len(match.group(0)), line)


def slug(heading):
    """GitHub's anchor for a heading: its text (Markdown marks and link targets dropped)
    lower-cased, punctuation other than '-' and '_' removed, each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text only
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    kept = "".join(char for char in text
                   if char in "-_ " or unicodedata.category(char)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path):
    """Every anchor a Markdown file offers: its headings' slugs (a repeated slug gets -1, -2,
    as on GitHub) and explicit <a name=...> / id=... anchors."""
    found, seen = set(), {}
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if inside:
            continue
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def link_targets(text):
    """(line number, target) of every inline link, image and reference definition."""
    for number, line in prose_lines(text):
        for match in INLINE_LINK.finditer(line):
            yield number, match.group(1).strip("<>")
        match = REFERENCE_DEFINITION.match(line)
        if match:
            yield number, match.group(1).strip("<>")


def broken_links(path):
    """Every relative link of ``path`` that does not resolve, as 'file:line: target: why'."""
    problems = []
    text = path.read_text(encoding="utf-8")
    for number, target in link_targets(text):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http(s), mailto and other schemes are not checked
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / unquote(file_part)).resolve() if file_part else path
        where = f"{path.name}:{number}: {target}"
        if not destination.exists():
            problems.append(f"{where}: no such file {destination}")
        elif anchor and destination.suffix.lower() == ".md":
            if unquote(anchor).lower() not in anchors(destination):
                problems.append(f"{where}: no heading with that anchor in {destination.name}")
    return problems


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.name)
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_the_readme_is_a_front_door():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve()
              for _, target in link_targets(README.read_text(encoding="utf-8"))}
    missing = [page.name for page in sorted((ROOT / "docs").glob("*.md"))
               if page.resolve() not in linked]
    assert missing == []


def test_the_readme_keeps_the_ci_test_command():
    """The command .ci/run runs is the README's, word for word."""
    command = "python -m pytest -q -n 2 tests"
    assert command in README.read_text(encoding="utf-8")
    assert command.replace("python", '"$venv/bin/python"', 1) in (
        ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_slugs_follow_github():
    assert slug("CIFAR-10 on a laptop CPU") == "cifar-10-on-a-laptop-cpu"
    assert slug("Training: `train_cnn.py`") == "training-train_cnnpy"
    assert slug("`--incremental`: recompute (Krypton)") == "--incremental-recompute-krypton"
    assert slug("Zeiler & Fergus 2014, sec. 4.2") == "zeiler--fergus-2014-sec-42"


def test_the_checker_catches_a_broken_link_and_a_broken_anchor(tmp_path):
    (tmp_path / "figure.png").write_bytes(b"")
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: `code`\n\n## A section: `code`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "![fine](figure.png) [fine](other.md) [fine](other.md#a-section-code)\n"
        "[fine, the repeated heading](other.md#a-section-code-1) [fine](#page)\n"
        "[skipped](https://example.com/missing.md) `[in code](missing_in_code.md)`\n"
        "```\n[in a fence](missing_in_fence.md)\n```\n"
        "![broken image](missing.png)\n"
        "[broken anchor](other.md#no-such-section)\n"
        "[broken own anchor](#nowhere)\n"
        "[broken link](docs/missing.md#page)\n"
        "[ref]: missing_reference.md\n")
    problems = broken_links(page)
    assert [problem.split(": ")[1] for problem in problems] == [
        "missing.png", "other.md#no-such-section", "#nowhere", "docs/missing.md#page",
        "missing_reference.md"]
    assert "no heading with that anchor" in problems[1]
    assert "no such file" in problems[0]
