"""The documentation: the options table is the schema's, and nothing it names is missing.

A reader who follows a link, opens a file the docs name, or sets a variable they
mention must find it; the options are described once, in signaling.conf.SCHEMA.
"""
import functools
import re
import subprocess
import sys

import pytest

from signaling import conf
from tests.servers import ROOT

pytestmark = pytest.mark.fast  # the first tier: no server (tests/test_consumer.py)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPTIONS_TABLE = [sys.executable, "scripts/options_table.py"]
OPERATIONS = ROOT / "docs" / "operations.md"


def prose(path):
    """The file's text without fenced code blocks (a shell line is not a reference)."""
    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)


def relative(path):
    return path.relative_to(ROOT).as_posix()


def test_the_readme_is_for_a_reader_arriving():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move detail into docs/"


def test_the_options_table_is_the_schemas():
    result = subprocess.run([*OPTIONS_TABLE, "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_table_that_differs_from_the_schema_is_caught_with_the_command_that_fixes_it(tmp_path):
    doc = tmp_path / "operations.md"
    text = OPERATIONS.read_text(encoding="utf-8")
    stale = text.replace("| `PEERJS_KEY` | `peerjs` |", "| `PEERJS_KEY` | `myapp` |")
    assert stale != text
    doc.write_text(stale, encoding="utf-8")
    result = subprocess.run([*OPTIONS_TABLE, "--check", "--doc", doc], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "run .venv/bin/python scripts/options_table.py" in result.stdout
    assert "+| `KEY` | `PEERJS_KEY` | `peerjs` |" in result.stdout
    # Without --check it writes the table back as the schema has it.
    subprocess.run([*OPTIONS_TABLE, "--doc", doc], cwd=ROOT, check=True)
    assert doc.read_text(encoding="utf-8") == text


def test_every_option_has_a_description():
    for name, (variable, _, _, description) in conf.SCHEMA.items():
        # Redis's keep the names deployments have always set (compose, make cluster, the Helm chart).
        assert variable.startswith(("PEERJS_", "REDIS_")) and description.strip(), name


def hand_written_variables():
    """Variables in the first column of operations.md's tables, the generated one left out."""
    text = OPERATIONS.read_text(encoding="utf-8")
    head, rest = text.split("<!-- options table:", 1)
    _, tail = rest.split("<!-- end of the options table -->", 1)
    names = set()
    for line in (head + tail).splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split(" | ")[0]))
    return names


def test_no_option_is_documented_twice():
    assert hand_written_variables(), "operations.md lost its tables of the site's variables"
    schema = {variable for variable, *_ in conf.SCHEMA.values()}
    twice = sorted(hand_written_variables() & schema)
    assert not twice, f"{twice} are options of signaling.conf.SCHEMA: delete their rows in docs/operations.md"


@functools.cache
def code_text():
    """Every tracked file but the docs: what the server, the site and the scripts read."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    texts = []
    for name in files.splitlines():
        if name.endswith(".md") or name.startswith(("docs/", "node_modules/")):
            continue
        path = ROOT / name
        if path.is_file() and path.stat().st_size < 1_000_000:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(texts)


@pytest.mark.parametrize("doc", DOCS, ids=relative)
def test_every_variable_the_docs_name_is_read_somewhere(doc):
    named = set(re.findall(r"\b(?:PEERJS|DJANGO|ASGI|REDIS|CUEPAGES)_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))
    unknown = sorted(name for name in named if not re.search(rf"\b{name}\b", code_text()))
    assert not unknown, f"{doc.name} names variables nothing reads: {unknown}"


def slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    seen = {}
    for line in prose(path).splitlines():
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            count = seen.get(base, 0)
            seen[base] = count + 1
            yield base if count == 0 else f"{base}-{count}"


def broken_links(doc):
    """The doc's relative links (and their #anchors) that lead nowhere."""
    text = re.sub(r"`[^`\n]*`", "", prose(doc))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in set(anchors(file)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=relative)
def test_every_relative_link_resolves(doc):
    broken = broken_links(doc)
    assert not broken, f"{doc.name} links to what does not exist: {broken}"


TOP_LEVEL = {path.name for path in ROOT.iterdir()}
# Not modules: a permission (`signaling.view_worker`), a system check (`cuepages.W001`).
NOT_MODULES = re.compile(r"\w+\.((view|add|change|delete)_\w+|[CEW]\d{3})")


def ignored(path):
    """A path git ignores: made at run time (bench/results/, a SQLite file)."""
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0


def missing(reference, doc=ROOT / "README.md"):
    """Why a `code span` that names a file, a test or a module does not resolve, or None."""
    module = re.fullmatch(r"(signaling|p2psite|cuepages|tests)(\.\w+)+(:\w+)?", reference)
    if module and not reference.endswith((".md", ".py")):
        if NOT_MODULES.fullmatch(reference):
            return None
        parts = reference.split(":")[0].split(".")
        for end in range(len(parts), 1, -1):
            base = ROOT.joinpath(*parts[:end])
            if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
                return None
        return "no such module"
    match = re.fullmatch(r"([\w.-]+(?:/[\w.*-]+)*/?)(?:::(\w+))?", reference)
    if not match:
        return None
    path, test = match.groups()
    if "/" in path:
        if path.split("/")[0] not in TOP_LEVEL:
            return None  # a URL path or a path on another machine (/run/..., etc/...)
    elif not path.endswith(".md"):
        return None
    elif (doc.parent / path).exists():
        return None  # docs/apps.md names security.md, beside it
    if not (ROOT / path).exists():
        return None if ignored(path) else "no such file"
    if test and not re.search(rf"def {test}\(", (ROOT / path).read_text()):
        return "no such test"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=relative)
def test_every_file_the_docs_name_exists(doc):
    text = prose(doc)
    references = re.findall(r"`([^`\n]+)`", text)
    # A Markdown file named in plain words (DESIGN.md) is a file the reader looks for too.
    references += re.findall(r"(?<![\w/.`-])([\w-]+\.md)\b(?!`)", re.sub(r"\]\([^)]*\)", "]", text))
    broken = {ref: why for ref in references if (why := missing(ref, doc))}
    assert not broken, f"{doc.name} names what is not in the repository: {broken}"


def test_the_reference_checks_can_fail(tmp_path):
    """The checks above see a missing file, test, module, link and anchor."""
    assert missing("DESIGN.md") == "no such file"
    assert missing("signaling/nosuch.py") == "no such file"
    assert missing("tests/test_docs.py::test_nosuch") == "no such test"
    assert missing("signaling.nosuch") == "no such module"
    assert missing("tests/test_docs.py::test_every_file_the_docs_name_exists") is None
    assert missing("signaling.conf.SCHEMA") is None and missing("signaling.view_worker") is None
    assert missing("cuepages.W001") is None and missing("cuepages.md", OPERATIONS) is None
    assert missing("bench/results/") is None  # made by make bench, ignored by git
    assert missing("/admin/signaling/peer/") is None  # a URL
    assert "options" in set(anchors(OPERATIONS)) and "rate-limits-and-bans" in set(anchors(OPERATIONS))
    doc = tmp_path / "doc.md"
    doc.write_text("# Top\n\n[a](doc.md#top) [b](nosuch.md) [c](#elsewhere) [d](https://example.com/x)\n")
    assert broken_links(doc) == ["nosuch.md", "#elsewhere"]
