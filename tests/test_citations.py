"""Every citation of the spec texts resolves, and every clause ID the code mentions is registered.

The spec texts ship in ``spec/text/`` (DESIGN.md §1). ``spec.citations`` finds citations (``d2-spec §2.9``,
``mvit-notes §3.2``, ``DESIGN.md conventions``, ``seed RPN part 2``, ``P1 Table 3b``, ...) and resolves them
against those texts. These tests scan the project's code and prose and fail with one ``file:line`` per citation
that does not resolve, per pointer to a document outside the repository, and per unregistered clause ID.
The expected-failure lists below are empty on purpose: a wrong citation is fixed where it is written.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from spec import citations
from spec.clauses import CLAUSES

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("spec", "reference", "fast", "detspec", "tests", "benchmarks", "examples", "scripts")
PROSE = ("README.md", "BENCHMARKS.md", "examples/**/*.md", "vectors/**/*.md")
TEXT_DIR = ROOT / "spec" / "text"

# Files whose citation-like strings are not citations. Each entry says why.
NOT_SCANNED: dict[str, str] = {
    "spec/citations.py": "the grammar itself: its docstrings and DOCUMENTS table spell out every form, including "
                         "the unshipped 'performance notes'",
    "tests/test_citations.py": "this file feeds deliberately bad citations to the resolver",
}

# Citations known not to resolve: "path:line: citation" -> reason. Empty: fix the citation instead.
KNOWN_UNRESOLVED: dict[str, str] = {}

# Clause-ID-like strings that are not clause IDs: "path: ID" -> reason.
NOT_CLAUSES: dict[str, str] = {
    "tests/test_plugin.py: BOX.NOT_A_CLAUSE": "the test checks that an unknown clause ID is a usage error",
}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def scanned_files() -> list[Path]:
    files = {p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts}
    files |= {p for pattern in PROSE for p in ROOT.glob(pattern)}
    return sorted(p for p in files if _rel(p) not in NOT_SCANNED)


def spec_texts() -> list[Path]:
    return sorted(TEXT_DIR.glob("*.md"))


def test_spec_texts_are_the_cited_documents():
    shipped = {p.name for p in spec_texts()}
    for prefix, name in citations.DOCUMENTS.items():
        assert name is None or name in shipped, f"{prefix!r} maps to spec/text/{name}, which does not exist"
    for name in shipped:
        assert citations.read_text(name) == (TEXT_DIR / name).read_text(encoding="utf-8")
        numbered = [s for s in citations.sections(name) if s.number]
        numbers = [s.number for s in numbered]
        assert len(numbers) == len(set(numbers)), f"spec/text/{name}: a section number is used twice"


def test_every_citation_resolves():
    bad = []
    sources = [(p, "") for p in scanned_files()] + [(p, citations.document_prefix(p.name)) for p in spec_texts()]
    count = 0
    for path, own_doc in sources:
        for c in citations.find_citations(path.read_text(encoding="utf-8"), own_doc):
            count += 1
            why = citations.problem(c)
            key = f"{_rel(path)}:{c.line}: {c.written}"
            if why is not None and key not in KNOWN_UNRESOLVED:
                bad.append(f"{key}  ->  {why}")
    assert count > 200, f"only {count} citations found: is the scanner still finding them?"
    assert not bad, "citations that do not resolve:\n" + "\n".join(bad)


_OUTSIDE_RE = re.compile(r"(?:\.\./)+shared/|(?<![\w./])shared/(?:notes|seed)\b|(?<![\w./])notes/[\w-]+\.md")


def test_no_pointer_to_documents_outside_the_repository():
    """The notes the project started from are now spec/text/*.md; a path into ../shared/ cannot be followed."""
    bad = [f"{_rel(p)}:{i}: {line.strip()}"
           for p in scanned_files() + spec_texts()
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if _OUTSIDE_RE.search(line)]
    assert not bad, "pointers to documents outside the repository (cite spec/text instead):\n" + "\n".join(bad)


# A detectron2 / SlowFast config key looks like a clause ID (RPN.NMS_THRESH, SF MVIT.DIM_MUL): these contexts mark
# a config key (after a config file or SlowFast's name, or in the first cell of a Markdown table of config keys).
_CONFIG_KEY_CONTEXT = re.compile(r"(?:defaults\.py|\.yaml|\bSF|detectron2's)\s+$|^\s*\|\s*$")


def clause_like_ids(text: str) -> list[tuple[int, str]]:
    areas = sorted({cid.split(".", 1)[0] for cid in CLAUSES})
    pattern = re.compile(rf"(?<![\w.])(?:{'|'.join(areas)})\.[A-Z][A-Z0-9_]*(?![\w(])(?!\.\w)")
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        for m in pattern.finditer(line):
            if not _CONFIG_KEY_CONTEXT.search(line[:m.start()]):
                out.append((i, m.group(0)))
    return out


def test_clause_ids_in_code_are_registered():
    bad = [f"{_rel(p)}:{i}: {cid}"
           for p in scanned_files() + spec_texts()
           for i, cid in clause_like_ids(p.read_text(encoding="utf-8"))
           if cid not in CLAUSES and f"{_rel(p)}: {cid}" not in NOT_CLAUSES]
    assert not bad, "clause IDs that spec.clauses does not register:\n" + "\n".join(bad)


def test_exception_lists_are_current():
    """An exception that no longer matches anything is removed, not kept around."""
    texts = {_rel(p): p.read_text(encoding="utf-8") for p in scanned_files()}
    for entry in NOT_CLAUSES:
        path, cid = entry.split(": ", 1)
        assert cid in texts.get(path, ""), f"NOT_CLAUSES entry {entry!r} matches nothing"
    for path in NOT_SCANNED:
        assert (ROOT / path).is_file(), f"NOT_SCANNED entry {path!r} does not exist"


# ----------------------------------------------------------------------------------- the resolver can fail
# Citations are assembled from pieces, so that a grep for a citation finds the code that uses it, not this file.
D2, MV, DES, SEED = "d2-spec", "mvit-notes", "DESIGN.md", "seed"


def test_a_bad_citation_is_reported():
    fake = "\n".join([
        f"ok: {D2} §2.9 and {MV} §3.2",
        f"bad section: {D2} §2.99",
        f"bad item: {D2} §2.13 item 9",
        f"bad design section: {DES} " + "chapters",
        f"bad seed part: {SEED} RPN part 7",
        "bad paper location: P1 " + "Table 99",
        "no document: see §5.1",
        "unshipped: performance " + "notes §5.10",
    ])
    bad = {c.line: why for c, why in citations.unresolved(fake)}
    assert sorted(bad) == [2, 3, 4, 5, 6, 7, 8], bad
    assert "2.99" in bad[2] and "item 9" in bad[3] and "chapters" in bad[4] and "RPN part 7" in bad[5]
    assert "Table 99" in bad[6] and "names no document" in bad[7] and "not shipped" in bad[8]


@pytest.mark.parametrize(("written", "expected"), [
    # (citation as written, the start of the heading or index entry it resolves to); hand-checked against the texts
    (f"{D2} §2.9", "2.9 Proposal selection"),
    (f"{D2} §1", "1 Config numbers"),
    (f"{D2} §3", "3 Known values"),
    (f"{D2} §6 item 5", "6 User pain points"),
    (f"{MV} §3.2", "3.2 Module semantics"),
    (f"{MV} App. A", "Appendix A. Ready-made conformance vectors"),
    (f"{DES} conventions", "4 Conventions"),
    (f'{DES} "Performance method"', "6 Performance method"),
    (f"{DES}'s contract", "2 The contract"),
    (f"{SEED} RPN part 2", "RPN part 2. Anchor generation"),
    ("P1 " + "Table 3b", "P1 Table 3b: the MViT-B 16×4 architecture"),
    ("P2 " + "eq. 5", "P2 eq. 5: Z = Attn(Q, K, V) + Q"),
])
def test_a_good_citation_resolves_to_its_section(written, expected):
    heading = citations.resolve(written)
    assert heading is not None and heading.startswith(expected), heading


def test_citation_lists_and_ranges_are_split():
    text = (f"{D2} §1.4, §2.3 and §2.8; {D2} §2-§3; {D2} §2.7/§3; {D2} §2.11 items 5-6; {D2} §6 (6-8); "
            f"{SEED} RPN parts 1-3; P1 " + "§3, Tables 3b, 4, 17; P2 " + "eq. 3-5; issue 11 §3; P2 has stride 4")
    got = [str(c) for c in citations.find_citations(text)]
    assert got == [f"{D2} §1.4", f"{D2} §2.3", f"{D2} §2.8", f"{D2} §2", f"{D2} §3", f"{D2} §2.7", f"{D2} §3",
                   f"{D2} §2.11 items 5,6", f"{D2} §6 items 6,7,8",
                   f"{SEED} RPN part 1", f"{SEED} RPN part 2", f"{SEED} RPN part 3",
                   "P1 §3", "P1 Table 3b", "P1 Table 4", "P1 Table 17", "P2 eq. 3", "P2 eq. 4", "P2 eq. 5"]


def test_the_clause_scanner_reports_an_unregistered_id():
    fake = "\n".join([
        "# clause " + "NMS.EMPTY is registered",
        "# clause " + "NMS.NO_SUCH_THING is not",
        "cited(0.7, 'defaults.py " + "RPN.NMS_THRESH')  # a detectron2 config key, not a clause",
        "cfg." + "MODEL.RPN.NMS_THRESH and SF " + "MVIT.DIM_MUL are config keys too",
        "| " + "RPN.NMS_THRESH | 0.7 | defaults.py |",
    ])
    found = clause_like_ids(fake)
    assert found == [(1, "NMS.EMPTY"), (2, "NMS.NO_SUCH_THING")], found
    assert "NMS.EMPTY" in CLAUSES and "NMS.NO_SUCH_THING" not in CLAUSES


def test_texts_are_package_data():
    """spec/text/*.md must ship in the wheel, or an installed detspec cannot follow its citations."""
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config.get("tool", {}).get("setuptools", {}).get("package-data", {})
    spec_patterns = list(patterns.get("spec", [])) + list(patterns.get("*", []))
    missing = [p.name for p in spec_texts() if not any(fnmatch.fnmatch(f"text/{p.name}", pat) for pat in spec_patterns)]
    assert not missing, f"pyproject.toml [tool.setuptools.package-data] does not ship spec/text/{missing}"
