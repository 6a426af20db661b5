"""No module uses another module's private (_-prefixed) name.

A static scan (``ast``) of every ``.py`` file under the project's code directories. A use is

- ``from X import _name`` (absolute or relative), ``import X._mod`` and ``from X import _mod``, or
- ``X._name`` (also ``X.Y._name``), where ``X`` is a name the file bound to a module by an import,

with ``_name`` not a dunder and ``X`` not the file's own module. ``self._x`` and ``obj._x`` on objects are not
module names, so they are not uses. Private names of third-party modules may be allowed below, each with a
reason; a project module's private name never is: make it public instead.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED_DIRS = ("spec", "layout", "reference", "fast", "detspec", "benchmarks", "scripts")

# Third-party private names that may be used: "module._name" (module spelled in full, aliases resolved) -> reason.
# Nothing is allowed for the project's own packages.
ALLOWED: dict[str, str] = {}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path, root: Path = ROOT) -> str:
    """'fast/proposals.py' -> 'fast.proposals'; 'fast/__init__.py' -> 'fast'."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str, root: Path) -> bool:
    """True when `dotted` names a module or package: the project's by its file, a third-party one by find_spec."""
    rel = Path(*dotted.split("."))
    if (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file():
        return True
    if (root / dotted.split(".")[0]).is_dir():
        return False  # a project package without that file: not a module
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ImportError, ValueError, AttributeError):
        return False


def _resolve_from(node: ast.ImportFrom, own: str, is_package: bool) -> str:
    """The absolute module of a (possibly relative) ``from ... import``."""
    if not node.level:
        return node.module or ""
    package = own.split(".") if is_package else own.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def private_uses(source: str, own: str, *, is_package: bool = False, root: Path = ROOT,
                 path: str = "<string>") -> list[str]:
    """'path:line: what' for each use of another module's private name in `source` (module `own`)."""
    tree = ast.parse(source, filename=path)
    out: list[str] = []
    modules: dict[str, str] = {}  # local name -> module it is bound to

    def report(node: ast.AST, dotted: str, text: str) -> None:
        if dotted not in ALLOWED:
            out.append(f"{path}:{node.lineno}: {text}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                for i, part in enumerate(parts):
                    if _is_private(part):
                        dotted = ".".join(parts[: i + 1])
                        report(node, dotted, f"import {alias.name}")
                        break
                if alias.asname:
                    modules[alias.asname] = alias.name
                else:
                    modules[parts[0]] = parts[0]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_from(node, own, is_package)
            for alias in node.names:
                if alias.name == "*":
                    continue
                if _is_private(alias.name) and target != own:
                    report(node, f"{target}.{alias.name}", f"from {target} import {alias.name}")
                elif _is_module(f"{target}.{alias.name}", root):
                    modules[alias.asname or alias.name] = f"{target}.{alias.name}"

    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain: list[str] = []
        base: ast.AST = node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in modules:
            continue
        chain.reverse()  # node is the outermost attribute: report only the first private segment, once
        target = modules[base.id]
        if target == own:
            continue
        for i, attr in enumerate(chain):
            if _is_private(attr):
                if i == len(chain) - 1:  # the outermost attribute of its chain: inner ones are visited too
                    written = ".".join([base.id, *chain])
                    report(node, ".".join([target, *chain]), written)
                break
    return sorted(set(out), key=lambda s: (s.split(":")[0], int(s.split(":")[1]), s))


def scan(root: Path = ROOT, dirs: tuple[str, ...] = SCANNED_DIRS) -> list[str]:
    found: list[str] = []
    for d in dirs:
        for path in sorted((root / d).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            found += private_uses(path.read_text(encoding="utf-8"), module_name(path, root),
                                  is_package=path.name == "__init__.py", root=root, path=rel)
    return found


def test_no_module_uses_another_modules_private_name():
    found = scan()
    assert not found, "uses of another module's private name (make the name public):\n" + "\n".join(found)


def test_every_allowed_name_is_third_party_and_has_a_reason():
    for dotted, reason in ALLOWED.items():
        assert dotted.split(".")[0] not in SCANNED_DIRS, f"{dotted}: a project name is never allowed"
        assert reason.strip(), f"{dotted}: give a reason"


def test_scanner_reports_bad_snippets(tmp_path):
    # a tiny project: pkg/a.py defines privates, pkg/b.py (the scanned source below) uses them
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("_X = 1\nPUBLIC = 2\n")
    (tmp_path / "pkg" / "_hidden.py").write_text("")
    bad = "\n".join([
        "from pkg.a import _X, PUBLIC",       # 1: private name by absolute import
        "from .a import _X as Y",             # 2: relative import
        "from pkg import a",                  # 3: binds a module ...
        "a._X",                               # 4: ... whose private name is read
        "import pkg.a as mod",                # 5
        "mod._X.real",                        # 6: reported once, at the private segment
        "import pkg._hidden",                 # 7: a private module
        "from pkg import _hidden",            # 8: the same, by from-import
        "pkg.a._X",                           # 9: through the package
        "mod.PUBLIC._y",                      # 10: a private attribute of a module's object
    ])
    found = private_uses(bad, "pkg.b", root=tmp_path, path="pkg/b.py")
    assert [s.split(":")[1] for s in found] == ["1", "2", "4", "6", "7", "8", "9", "10"], found
    assert "pkg/b.py:4: a._X" in found
    assert "pkg/b.py:6: mod._X" in found


def test_scanner_accepts_good_snippets(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("")
    good = "\n".join([
        "from pkg.a import PUBLIC",
        "import pkg.a as mod",
        "mod.__file__",                       # dunder
        "mod.PUBLIC.__name__",
        "class C:",
        "    def f(self):",
        "        return self._x, obj._y",     # attributes of objects, not of modules
        "_own = 1",
        "print(_own)",
    ])
    assert private_uses(good, "pkg.b", root=tmp_path, path="pkg/b.py") == []
    own = private_uses("import pkg.a as mod\nmod._z\n", "pkg.a", root=tmp_path)
    assert own == [], own  # a module's own private names are its own


def test_scanner_allowlist_is_applied(tmp_path, monkeypatch):
    monkeypatch.setitem(ALLOWED, "math._secret", "test entry")
    found = private_uses("import math\nmath._secret\nmath._other\n", "pkg.b", root=tmp_path, path="b.py")
    assert found == ["b.py:3: math._other"], found
