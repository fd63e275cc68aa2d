"""The module map of ``docs/architecture.md``, generated from the code: each module's first
docstring sentence and the package's modules it imports, read with :mod:`ast` (nothing of the
package is imported or run), and the floor each module stands on.

Regenerate the page's block after moving, adding or documenting a module::

    python tests/helpers/architecture.py --write

``python tests/helpers/architecture.py`` alone prints the block; ``--check`` exits 1 when the
page differs from it (``tests/unit/test_architecture_doc.py`` checks the same, and that the
page's threads section names every thread the package names).
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "simvue_otel"
PAGE = ROOT / "docs" / "architecture.md"
COMMAND = "python tests/helpers/architecture.py --write"
BEGIN = f"<!-- BEGIN GENERATED module map: edit the code's docstrings, then run `{COMMAND}` -->"
END = "<!-- END GENERATED module map -->"

_INTERNAL = "simvue_otel._internal"
_LONGEST = 150  # characters of a docstring's first sentence kept in the table


@dataclass
class Module:
    """One module of the package, as its source says."""

    name: str  # dotted, relative to ``simvue_otel._internal`` (public modules: ``simvue_otel.*``)
    group: str  # the package it belongs to, in the same naming
    summary: str
    imports: set[str] = field(default_factory=set)  # at import time
    later: set[str] = field(default_factory=set)  # inside a function only
    floor: int = 0


def _dotted(path: Path, package: Path) -> str:
    """``src/simvue_otel/_internal/sink/spool.py`` -> ``simvue_otel._internal.sink.spool``."""
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _short(dotted: str) -> str:
    if dotted == _INTERNAL:
        return "_internal"
    if dotted.startswith(_INTERNAL + "."):
        return dotted[len(_INTERNAL) + 1 :]
    return dotted


def _summary(tree: ast.Module) -> str:
    """The docstring's first sentence, in Markdown, cut short past ``_LONGEST`` characters."""
    doc = ast.get_docstring(tree) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    text = re.sub(r":\w+:`~?\.*([^`]+)`", r"`\1`", text)  # Sphinx roles -> code
    text = text.replace("``", "`")
    match = re.search(r"(?<!e\.g)(?<!i\.e)\. (?=[A-Z`(])", text)
    if match:
        text = text[: match.start() + 1]
    if len(text) > _LONGEST:
        text = text[: text.rfind(" ", 0, _LONGEST)].rstrip(",;:") + " …"
    return text.replace("|", "\\|")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


_Import = ast.Import | ast.ImportFrom


def _imports(tree: ast.Module) -> Iterator[tuple[_Import, bool]]:
    """Every import statement run at some time, and whether it runs at import time (not in
    a function); imports for type checkers only are left out."""

    def walk(nodes: Iterable[ast.AST], top: bool) -> Iterator[tuple[_Import, bool]]:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node, top
            elif isinstance(node, ast.If) and _is_type_checking(node):
                yield from walk(node.orelse, top)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(ast.iter_child_nodes(node), False)
            else:
                yield from walk(ast.iter_child_nodes(node), top)

    return walk(tree.body, True)


def _targets(node: _Import, here: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules an import statement in module ``here`` names."""
    if isinstance(node, ast.Import):
        bases = [alias.name for alias in node.names]
        return {_known(base, known) for base in bases} - {""}
    package = here if is_package else here.rpartition(".")[0]
    if node.level:
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    found = set()
    for alias in node.names:
        target = f"{base}.{alias.name}"
        found.add(target if target in known else _known(base, known))
    return found - {""}


def _known(dotted: str, known: set[str]) -> str:
    """The innermost module of the package that ``dotted`` is, or is inside; "" for none."""
    while dotted and dotted not in known:
        dotted = dotted.rpartition(".")[0]
    return dotted


def read_modules(package: Path = PACKAGE) -> dict[str, Module]:
    """Every module of the package, with its summary, imports and floor."""
    sources = {_dotted(path, package): path for path in sorted(package.rglob("*.py"))}
    known = set(sources)
    modules: dict[str, Module] = {}
    for dotted, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        group = dotted if is_package else dotted.rpartition(".")[0]
        module = Module(_short(dotted), _short(group), _summary(tree))
        for node, top in _imports(tree):
            for target in _targets(node, dotted, is_package, known):
                if target != dotted:
                    (module.imports if top else module.later).add(_short(target))
        module.later -= module.imports
        modules[module.name] = module
    _set_floors(modules)
    return modules


def _set_floors(modules: dict[str, Module]) -> None:
    """Floor 1: imports none of the package's modules; else one above the highest it imports
    (at any time). An import that closes a circle is not counted (``circles`` names it)."""
    floors: dict[str, int] = {}
    visiting: set[str] = set()

    def floor(name: str) -> int:
        if name in floors:
            return floors[name]
        if name in visiting:
            return 0
        visiting.add(name)
        module = modules[name]
        below = [floor(n) for n in sorted(module.imports | module.later) if n in modules]
        visiting.discard(name)
        floors[name] = 1 + max(below, default=0)
        return floors[name]

    for name in sorted(modules):
        modules[name].floor = floor(name)


def circles(modules: dict[str, Module]) -> list[list[str]]:
    """Modules that import each other, directly or not (each circle once, smallest first)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def visit(start: str, name: str, path: list[str]) -> None:
        for nxt in sorted(modules[name].imports | modules[name].later):
            if nxt == start:
                if frozenset(path) not in seen:
                    seen.add(frozenset(path))
                    found.append([*path, start])
            elif nxt in modules and nxt > start and nxt not in path:
                visit(start, nxt, [*path, nxt])

    for start in sorted(modules):
        visit(start, start, [start])
    return sorted(found, key=len)


_THREAD_KEYWORDS = ("name", "thread_name_prefix")


def thread_names(package: Path = PACKAGE) -> set[str]:
    """The names the package gives the threads it starts (all begin ``simvue-otel-``): the
    name passed to ``threads.start_daemon``, and any ``name=`` or ``thread_name_prefix=``
    given in a call (``threading.Thread``, ``ThreadPoolExecutor``, a forwarder)."""
    names: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            given = [k.value for k in node.keywords if k.arg in _THREAD_KEYWORDS]
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called == "start_daemon" and len(node.args) > 1:
                given.append(node.args[1])
            names.update(
                v.value
                for v in given
                if isinstance(v, ast.Constant)
                and isinstance(v.value, str)
                and v.value.startswith("simvue-otel-")
            )
    return names


def _wrapped(label: str, names: list[str], width: int = 96) -> list[str]:
    """``label`` and the names, two spaces apart, in lines of at most ``width`` characters."""
    rows: list[str] = []
    row = label
    for name in names:
        if len(row) + 2 + len(name) > width and row.strip():
            rows.append(row)
            row = " " * len(label)
        row += "  " + name
    rows.append(row)
    return rows


def _code(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(names))


def render(modules: dict[str, Module] | None = None) -> str:
    """The generated block: the floors, then one table per package, without the markers."""
    modules = read_modules() if modules is None else modules
    lines: list[str] = []
    top = max(m.floor for m in modules.values())
    lines.append(
        f"{len(modules)} modules on {top} floors. A module stands one floor above the highest "
        "of the package's modules it imports (when it is imported, or later inside a "
        "function); floor 1 imports none of them."
    )
    lines.append("")
    lines.append("```text")
    for level in range(top, 0, -1):
        names = sorted(m.name for m in modules.values() if m.floor == level)
        lines.extend(_wrapped(f"{level:>2}", names))
    lines.append("```")
    found = circles(modules)
    if found:
        lines.append("")
        lines.append("Import circles (each should be broken):")
        lines.append("")
        lines.extend(f"- {' → '.join(f'`{n}`' for n in circle)}" for circle in found)
    groups: dict[str, list[Module]] = {}
    for module in modules.values():
        groups.setdefault(module.group, []).append(module)
    order = sorted(groups, key=lambda g: (g.startswith("simvue_otel"), g != "_internal", g))
    for group in order:
        members = sorted(groups[group], key=lambda m: (m.name != group, -m.floor, m.name))
        lines.append("")
        lines.append(f"### `{group}`")
        lines.append("")
        lines.append("| Module | Floor | What it is | Imports |")
        lines.append("|---|---|---|---|")
        for m in members:
            imports = _code(m.imports)
            if m.later:
                later = f"*later:* {_code(m.later)}"
                imports = f"{imports}; {later}" if imports else later
            lines.append(f"| `{m.name}` | {m.floor} | {m.summary} | {imports or '-'} |")
    return "\n".join(lines)


def splice(page: str, block: str) -> str:
    """The page with its generated block replaced by ``block``."""
    start = page.index(BEGIN) + len(BEGIN)
    end = page.index(END)
    return f"{page[:start]}\n\n{block}\n\n{page[end:]}"


def committed(page: str) -> str:
    """The generated block as the page holds it."""
    start = page.index(BEGIN) + len(BEGIN)
    return page[start : page.index(END)].strip("\n")


def main(argv: list[str]) -> int:
    block = render()
    if "--write" in argv:
        PAGE.write_text(splice(PAGE.read_text(encoding="utf-8"), block), encoding="utf-8")
        return 0
    if "--check" in argv:
        if committed(PAGE.read_text(encoding="utf-8")) != block:
            print(f"docs/architecture.md's module map is stale; refresh it with: {COMMAND}")
            return 1
        return 0
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
