"""The README is the front door: its two commands come first (and CI runs the second), it stays short, links every
docs/ page, and every relative link and picture in it and in docs/ resolves. Its results table is generated."""

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RUN = "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && genfl-run"
TEST = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest -q'
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def _pages() -> list[Path]:
    return sorted((REPO / "docs").glob("*.md"))


def _code_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)]


def test_the_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    text = README.read_text()
    assert _code_blocks(text)[:2] == [RUN, TEST]
    assert text.index(RUN) < text.index("\n## ")  # before any section
    ci = (REPO / ".ci" / "run").read_text()
    assert TEST.replace("pip install -e", "pip install -q -e") in ci or TEST in ci, "`.ci/run` must run README command 2"


def test_the_readme_is_short_and_its_lines_are_readable():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail to a docs/ page"
    long = [(n, len(line)) for n, line in enumerate(lines, 1) if len(line) > 150]
    assert not long, f"README.md lines over 150 characters (line, length): {long}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {Path(m.group(1) or m.group(2)).as_posix().split("#")[0] for m in LINK.finditer(README.read_text())}
    missing = [p.relative_to(REPO).as_posix() for p in _pages() if p.relative_to(REPO).as_posix() not in linked]
    assert len(_pages()) >= 8 and not missing, f"docs pages the README does not link: {missing}"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_and_picture_in_the_readme_and_docs_resolves():
    broken = []
    for page in [README, *(p for p in _pages() if p.name != "deploy.md")]:  # deploy.md has its own owner and test
        for match in LINK.finditer(page.read_text()):
            target = match.group(1) or match.group(2)
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_pictures_are_small_and_no_page_names_a_machine_path():
    for picture in (REPO / "docs" / "img").glob("*.png"):
        assert picture.stat().st_size < 300_000, f"{picture.name}: {picture.stat().st_size} bytes; keep pictures small"
    for page in [README, *_pages()]:
        found = re.findall(r"(?<![\w.])/(?:work|root|home)/\S*", page.read_text())
        assert not found, f"{page.name} names a machine's path: {found}"


def test_the_readme_results_table_is_what_bench_headline_generates():
    spec = importlib.util.spec_from_file_location("headline", REPO / "bench" / "headline.py")
    headline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(headline)
    text = README.read_text()
    assert headline.replace_between_markers(text, headline.table()) == text, \
        "README's headline table differs from the results: run `python bench/headline.py --write`"
    assert "| 0.1 | shifted, the default (generator check) | 0-4 |" in text  # the table is there, not empty
