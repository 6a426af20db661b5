"""Citations of the spec texts: find them in code and prose, and resolve them against ``spec/text/*.md``.

The spec texts ship with the package (``spec/text/``), so a reader of an installed detspec can follow every
citation. The forms, by the document they name (``DOCUMENTS`` maps each prefix to its file):

- ``d2-spec §2.9`` -> ``detectron2.md``; also ``d2-spec §1.4, §2.3 and §2.8``, ``d2-spec §2-§3``,
  ``d2-spec §2.7/§3``, ``d2-spec §2.13 item 5``, ``d2-spec §2.11 items 5-6``, ``d2-spec §6 (6-8)`` (items are
  the numbered list entries of the section), and ``d2-spec`` alone (the whole document).
- ``mvit-notes §3.2`` -> ``mvit.md`` (same grammar as d2-spec); ``mvit-notes App. A`` for its appendix.
- ``DESIGN.md conventions``, ``DESIGN.md "Performance method"``, ``DESIGN.md's contract``, ``DESIGN.md §4`` ->
  ``design.md``: a one-word or quoted section title, or a section number; ``DESIGN.md`` alone is the document.
- ``seed RPN part 2``, ``seed RPN parts 1-4``, ``seed §1`` -> ``seed.md``.
- ``P1 §3.1``, ``P1 Table 3b``, ``P1 Tables 3b, 4, 17``, ``P1 Fig. 3``, ``P1 App. D.1``, ``P2 eq. 3-5`` (the MViT and
  MViTv2 papers, which cannot ship): resolved through the index of paper locations in ``mvit.md``
  (Appendix B), which says what each location contains and where the text restates it.
- ``performance notes §N``: a known document that does not ship; it never resolves.

A ``§N`` with no document before it is reported too (``doc == ""``): nobody can tell which text it means. Project
issue references (``issue 11 §3``) and other papers (``Faster R-CNN paper §3.1.2``) are external and not checked.

``find_citations(text)`` lists the citations of a text; ``resolve(citation)`` returns the heading (or the paper
index entry) it points to, or None; ``problem(citation)`` says why it does not resolve.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

# citation prefix -> file in spec/text (None: a document that exists outside detspec and does not ship).
DOCUMENTS: dict[str, str | None] = {
    "d2-spec": "detectron2.md",
    "mvit-notes": "mvit.md",
    "DESIGN.md": "design.md",
    "seed": "seed.md",
    "P1": "mvit.md",  # paper locations: mvit.md Appendix B
    "P2": "mvit.md",
    "performance notes": None,
}

PAPERS = ("P1", "P2")


@dataclass(frozen=True)
class Citation:
    """One cited location. ``target`` is ``"§2.9"``, a section title (``"conventions"``), ``"RPN part 2"``, a
    paper location (``"Table 3b"``) or ``""`` for a whole document; ``items`` are numbered list entries."""

    doc: str
    target: str = ""
    items: tuple[int, ...] = ()
    line: int = 0
    written: str = field(default="", compare=False)

    def __str__(self) -> str:
        s = f"{self.doc} {self.target}".strip() if self.doc else self.target
        if self.items:
            s += " item" + ("s " if len(self.items) > 1 else " ") + ",".join(map(str, self.items))
        return s


@dataclass(frozen=True)
class Section:
    number: str | None  # "2.9", "1"; None for an unnumbered heading
    title: str  # the heading text after the number
    heading: str  # the whole heading text (without the leading #'s)
    level: int  # number of #'s
    body: str  # the text up to the next heading of the same or a higher level (subsections included)


# ---------------------------------------------------------------------------------------------- the texts
def text_path(name: str) -> Path:
    """Where a spec text lives on disk (next to this module)."""
    return Path(__file__).resolve().parent / "text" / name


@functools.cache
def read_text(name: str) -> str:
    """The Markdown of ``spec/text/<name>``, read as package data (works from an installed wheel)."""
    try:
        return resources.files(__package__ or "spec").joinpath("text").joinpath(name).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError, NotADirectoryError):
        return text_path(name).read_text(encoding="utf-8")


_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_NUMBERED_RE = re.compile(r"^(\d+(?:\.\d+)*)\.?\s+(.*)$")


@functools.cache
def sections(name: str) -> tuple[Section, ...]:
    """The headings of a spec text, in order, each with its number (if any) and body."""
    lines = read_text(name).splitlines()
    heads: list[tuple[int, int, str]] = []  # (line index, level, text)
    in_code = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = None if in_code else _HEADING_RE.match(line)
        if m:
            heads.append((i, len(m.group(1)), m.group(2)))
    out = []
    for k, (i, level, text) in enumerate(heads):
        end = next((j for j, lv, _ in heads[k + 1:] if lv <= level), len(lines))
        m = _NUMBERED_RE.match(text)
        number, title = (m.group(1), m.group(2)) if m else (None, text)
        out.append(Section(number, title, text, level, "\n".join(lines[i + 1:end])))
    return tuple(out)


_INDEX_RE = re.compile(r"^- \*\*(P[12]) (.+?)\*\*:\s*(.*)$")


@functools.cache
def paper_index() -> dict[tuple[str, str], str]:
    """(paper, normalized location) -> the index entry, from mvit.md's list of paper locations."""
    index = {}
    for line in read_text(DOCUMENTS["P1"]).splitlines():
        m = _INDEX_RE.match(line)
        if m:
            index[(m.group(1), _normalize_location(m.group(2)))] = f"{m.group(1)} {m.group(2)}: {m.group(3)}"
    return index


# ---------------------------------------------------------------------------------------------- parsing
_NUM = r"\d+(?:\.\d+)*"
_PREFIX_RE = re.compile(
    r"(?<![\w./-])(?:(?P<sec>d2-spec|mvit-notes|performance notes)(?![\w-])"
    r"|(?P<design>DESIGN\.md)"
    r"|(?P<seed>seed)(?=\s+(?:RPN\s+parts?\s+\d|§\s?\d))"
    r"|(?P<paper>P[12])(?=\s+(?:§\s?\d|Tables?\s+[A-Z\d]|Fig(?:ure|\.)\s*\d|App(?:endix|\.)\s*[A-Z]|[Ee]qs?\.\s*\d))"
    r"|(?P<external>issue\s+\d+|paper|PEP\s+\d+))"
)
_FIRST_SEC_RE = re.compile(rf"\s+(?:§\s?)?(?P<num>{_NUM})(?![\d])|\s*§\s?(?P<num2>{_NUM})(?![\d])"
                           r"|\s+App(?:endix|\.)\s*(?P<app>[A-Z])\b")
_NEXT_SEC_RE = re.compile(rf"\s*(?:,|/|-|–|and|or|to)\s*§\s?(?P<num>{_NUM})(?![\d])")
_ASIDE_RE = re.compile(r"\s*\([^()]*\)|(?:\s+(?!(?:and|or|to)\b)[A-Za-z][\w-]*){1,4}")
_ITEMS_RE = re.compile(r"\s+items?\s+(\d+(?:\s*(?:[-–,/]|and)\s*\d+)*)|\s+\((\d+\s*[-–]\s*\d+)\)")
_DESIGN_TAIL_RE = re.compile(
    rf"`?(?:'s)?(?:\s*,?\s*§\s?(?P<num>{_NUM})(?![\d])|(?:\s*,\s*|\s+)[\"“](?P<quoted>[^\"”]+)[\"”]"
    r"|\s+(?P<word>[A-Za-z][A-Za-z-]*))?"
)
_SEED_RE = re.compile(rf"\s+(?:RPN\s+parts?\s+(?P<a>\d+)(?:\s*[-–]\s*(?P<b>\d+))?|§\s?(?P<num>{_NUM}))")
_LOC_RE = re.compile(
    r"(?:§\s?(?P<sec>\d+(?:\.\d+)*)(?![\d])"
    r"|Tables?\s+(?P<tab>[A-Z]\.\d+|\d+[a-z]?)"
    r"|Fig(?:ure|\.)\s*(?P<fig>\d+)"
    r"|App(?:endix|\.)\s*(?P<app>[A-Z](?:\.\d+)?)"
    r"|[Ee]qs?\.\s*(?P<eq>\d+)(?:\s*[-–]\s*(?P<eq2>\d+))?)"
)
_LOC_SEP_RE = re.compile(r"\s*(?:,|/|and)\s*")
_MORE_TABLES_RE = re.compile(r"\s*,\s*(?P<tab>[A-Z]\.\d+|\d+[a-z]?)(?![\w.])")
_BARE_RE = re.compile(rf"(?<![\w§])§\s?(?P<num>{_NUM})(?![\d])")


def _normalize_location(loc: str) -> str:
    loc = re.sub(r"\s+", " ", loc.strip())
    loc = re.sub(r"^§\s?", "§", loc)
    loc = re.sub(r"^Tables? ", "Table ", loc)
    loc = re.sub(r"^Fig(?:ure|\.)\s*", "Fig. ", loc)
    loc = re.sub(r"^App(?:endix|\.)\s*", "App. ", loc)
    loc = re.sub(r"^[Ee]qs?\.\s*", "eq. ", loc)
    return loc


def _items(tail: str) -> tuple[tuple[int, ...], int]:
    """``item 5``, ``items 5-6``, ``items 3/6``, ``items 3 and 6``, ``(6-8)`` -> the item numbers."""
    m = _ITEMS_RE.match(tail)
    if not m:
        return (), 0
    items: list[int] = []
    for part in re.split(r"\s*(?:,|/|and)\s*", m.group(1) or m.group(2)):
        ends = [int(x) for x in re.split(r"\s*[-–]\s*", part.strip())]
        lo, hi = ends[0], ends[-1]
        items += range(lo, hi + 1) if lo <= hi else [lo, hi]
    return tuple(items), m.end()


def _section_list(doc: str, line: str, pos: int, lineno: int, start: int) -> tuple[list[Citation], int]:
    """Sections after a prefix: a first one (the § may be missing) and ``, §N`` / ``/§N`` / ``-§N`` more."""
    m = _FIRST_SEC_RE.match(line, pos)
    if not m:
        return [Citation(doc, "", (), lineno, line[start:pos])], pos
    if m.group("app"):
        return [Citation(doc, f"App. {m.group('app')}", (), lineno, line[start:m.end()])], m.end()
    out = []
    num = m.group("num") or m.group("num2")
    while True:
        pos = m.end()
        items, used = _items(line[pos:])
        pos += used
        out.append(Citation(doc, f"§{num}", items, lineno, line[start:pos]))
        m = _NEXT_SEC_RE.match(line, pos)
        if not m:  # "§2.4 (boxes, IoU) and §2.7", "§3 level assignment, §2.11": skip the aside
            aside = _ASIDE_RE.match(line, pos)
            m = aside and _NEXT_SEC_RE.match(line, aside.end())
        if not m:
            return out, pos
        num = m.group("num")


def _paper_list(doc: str, line: str, pos: int, lineno: int, start: int) -> tuple[list[Citation], int]:
    out = []
    while True:
        m = _LOC_RE.match(line, pos)
        if not m:
            return out, pos
        pos = m.end()
        if m.group("sec"):
            locs = [f"§{m.group('sec')}"]
        elif m.group("tab"):
            locs = [f"Table {m.group('tab')}"]
            while more := _MORE_TABLES_RE.match(line, pos):
                locs.append(f"Table {more.group('tab')}")
                pos = more.end()
        elif m.group("fig"):
            locs = [f"Fig. {m.group('fig')}"]
        elif m.group("app"):
            locs = [f"App. {m.group('app')}"]
        else:
            lo, hi = int(m.group("eq")), int(m.group("eq2") or m.group("eq"))
            locs = [f"eq. {k}" for k in range(lo, max(lo, hi) + 1)]
        out += [Citation(doc, loc, (), lineno, line[start:pos]) for loc in locs]
        sep = _LOC_SEP_RE.match(line, pos)
        if not sep or not _LOC_RE.match(line, sep.end()):
            return out, pos
        pos = sep.end()


def find_citations(text: str, default_doc: str = "") -> list[Citation]:
    """Every citation in ``text`` (one line at a time), in order, with 1-based line numbers. A ``§N`` with no
    document before it gets ``default_doc`` (a spec text citing its own sections passes its own prefix)."""
    found: list[Citation] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        covered: list[tuple[int, int]] = []
        for m in _PREFIX_RE.finditer(line):
            if any(a <= m.start() < b for a, b in covered):
                continue
            start, pos = m.start(), m.end()
            if m.group("sec"):
                cites, pos = _section_list(m.group("sec"), line, pos, lineno, start)
            elif m.group("design"):
                t = _DESIGN_TAIL_RE.match(line, pos)
                target = ""
                if t.group("num"):
                    target = f"§{t.group('num')}"
                elif t.group("quoted") or t.group("word"):
                    target = t.group("quoted") or t.group("word")
                pos = t.end() if target else pos
                cites = [Citation("DESIGN.md", target, (), lineno, line[start:pos])]
            elif m.group("seed"):
                s = _SEED_RE.match(line, pos)
                pos = s.end()
                if s.group("num"):
                    cites = [Citation("seed", f"§{s.group('num')}", (), lineno, line[start:pos])]
                else:
                    lo, hi = int(s.group("a")), int(s.group("b") or s.group("a"))
                    cites = [Citation("seed", f"RPN part {k}", (), lineno, line[start:pos])
                             for k in range(lo, max(lo, hi) + 1)]
            elif m.group("paper"):
                pos += len(line[pos:]) - len(line[pos:].lstrip())
                cites, pos = _paper_list(m.group("paper"), line, pos, lineno, start)
            else:  # external: skip the § locations that follow it
                cites = []
                tail = re.match(rf"\s*§\s?{_NUM}(?:\s*(?:,|/|-|–|and)\s*§\s?{_NUM})*", line[pos:])
                pos += tail.end() if tail else 0
            covered.append((start, pos))
            found += cites
        for m in _BARE_RE.finditer(line):
            if not any(a <= m.start() < b for a, b in covered):
                found.append(Citation(default_doc, f"§{m.group('num')}", (), lineno, m.group(0)))
    return found


# ---------------------------------------------------------------------------------------------- resolving
def _as_citation(citation: Citation | str) -> Citation:
    if isinstance(citation, Citation):
        return citation
    found = find_citations(citation)
    if len(found) != 1:
        raise ValueError(f"expected exactly one citation in {citation!r}, found {len(found)}")
    return found[0]


def _find_section(name: str, target: str) -> Section | None:
    secs = sections(name)
    if target.startswith("§"):
        number = target[1:]
        return next((s for s in secs if s.number == number), None)
    if target.startswith("App. "):
        pat = re.compile(rf"^Appendix {re.escape(target[5:])}\b")
        return next((s for s in secs if pat.match(s.heading)), None)
    if target.startswith("RPN part "):
        pat = re.compile(rf"^{re.escape(target)}(?!\d)", re.IGNORECASE)
        return next((s for s in secs if pat.match(s.title)), None)
    words = re.compile(rf"(?<!\w){re.escape(target.lower())}(?!\w)")
    exact = [s for s in secs if s.title.lower() == target.lower()]
    return exact[0] if exact else next((s for s in secs if words.search(s.title.lower())), None)


def _has_item(section: Section, item: int) -> bool:
    return re.search(rf"^\s*{item}\.\s", section.body, re.MULTILINE) is not None


def problem(citation: Citation | str) -> str | None:
    """Why a citation does not resolve, or None when it does."""
    c = _as_citation(citation)
    if not c.doc:
        return f"{c.target} names no document (write e.g. 'd2-spec {c.target}' or 'mvit-notes {c.target}')"
    if c.doc not in DOCUMENTS:
        return f"unknown document {c.doc!r} (known: {', '.join(DOCUMENTS)})"
    name = DOCUMENTS[c.doc]
    if name is None:
        return f"{c.doc!r} is not shipped in spec/text (cite a shipped text instead)"
    if c.doc in PAPERS:
        if (c.doc, _normalize_location(c.target)) not in paper_index():
            return f"{c.doc} {c.target} is not in the index of paper locations ({name}, Appendix B)"
        return None
    if not c.target:
        return None
    sec = _find_section(name, c.target)
    if sec is None:
        return f"{name} has no section {c.target!r}"
    missing = [i for i in c.items if not _has_item(sec, i)]
    if missing:
        return f"{name} section {sec.heading!r} has no numbered item {', '.join(map(str, missing))}"
    return None


def resolve(citation: Citation | str) -> str | None:
    """The heading a citation points to (for a paper location, its index entry; for a whole document, its
    title), or None when it does not resolve."""
    c = _as_citation(citation)
    if problem(c) is not None:
        return None
    name = DOCUMENTS[c.doc]
    if c.doc in PAPERS:
        return paper_index()[(c.doc, _normalize_location(c.target))]
    if not c.target:
        return sections(name)[0].heading
    return _find_section(name, c.target).heading


def unresolved(text: str, default_doc: str = "") -> list[tuple[Citation, str]]:
    """The citations of ``text`` that do not resolve, each with the reason."""
    return [(c, why) for c in find_citations(text, default_doc) if (why := problem(c)) is not None]


def document_prefix(name: str) -> str:
    """The citation prefix of a spec text file (``"detectron2.md"`` -> ``"d2-spec"``)."""
    return next(p for p, f in DOCUMENTS.items() if f == name and p not in PAPERS)
