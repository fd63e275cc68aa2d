"""docs/architecture.md's module map is generated from the code, and must match it: a module
moved, added or given a new docstring, or an import changed, without refreshing the page fails
here, with the command that refreshes it."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.helpers import architecture


def test_module_map_matches_the_code() -> None:
    page = architecture.PAGE.read_text(encoding="utf-8")
    assert architecture.BEGIN in page and architecture.END in page
    assert architecture.committed(page) == architecture.render(), (
        f"docs/architecture.md's module map is stale; refresh it with: {architecture.COMMAND}"
    )


def test_every_module_is_on_the_map() -> None:
    modules = architecture.read_modules()
    sources = list(architecture.PACKAGE.rglob("*.py"))
    assert len(modules) == len(sources)
    assert {"run", "pipeline", "mapping.records", "server.store"} <= set(modules)


def test_the_page_names_every_thread_the_package_starts() -> None:
    page = architecture.PAGE.read_text(encoding="utf-8")
    handwritten = page.replace(architecture.committed(page), "")
    names = architecture.thread_names()
    assert {"simvue-otel-pipeline", "simvue-otel-sink", "simvue-otel-prepare"} <= names
    missing = sorted(n for n in names if f"`{n}`" not in handwritten)
    assert not missing, f"docs/architecture.md's threads section does not name {missing}"


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "simvue_otel" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root / "simvue_otel"


def test_imports_floors_and_circles_are_read_from_the_source(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "__init__.py": '"""The face."""\nfrom ._internal.b import B\n',
            "_internal/__init__.py": '"""Private."""\n',
            "_internal/a.py": '"""Ground floor. More text."""\n',
            "_internal/b.py": """\
                \"\"\"Uses ``a`` and, lazily, ``c``: see :class:`~.c.C`.\"\"\"
                from typing import TYPE_CHECKING
                from . import a
                if TYPE_CHECKING:
                    from .d import D
                def later():
                    from .c import C
                """,
            "_internal/c.py": '"""Imports a package."""\nfrom .pkg import thing\n',
            "_internal/d.py": '"""Only a type."""\n',
            "_internal/pkg/__init__.py": '"""A package."""\nfrom ..a import x\n',
            "_internal/x.py": '"""Circle one."""\nfrom .y import Y\n',
            "_internal/y.py": '"""Circle two."""\nimport simvue_otel._internal.x\n',
        },
    )
    modules = architecture.read_modules(package)
    b = modules["b"]
    assert b.imports == {"a"} and b.later == {"c"}  # TYPE_CHECKING imports are left out
    assert b.summary == "Uses `a` and, lazily, `c`: see `c.C`."
    assert modules["a"].summary == "Ground floor."
    assert modules["c"].imports == {"pkg"} and modules["pkg"].imports == {"a"}
    assert modules["pkg"].group == "pkg" and modules["c"].group == "_internal"
    assert (modules["a"].floor, modules["pkg"].floor, modules["c"].floor) == (1, 2, 3)
    assert modules["b"].floor == 4 and modules["simvue_otel"].floor == 5
    assert architecture.circles(modules) == [["x", "y", "x"]]
    block = architecture.render(modules)
    assert "Import circles" in block and "| `b` | 4 | Uses `a` and, lazily" in block


def test_splice_replaces_only_the_block() -> None:
    page = f"intro\n{architecture.BEGIN}\nold\n{architecture.END}\nrest\n"
    new = architecture.splice(page, "new")
    assert new == f"intro\n{architecture.BEGIN}\n\nnew\n\n{architecture.END}\nrest\n"
    assert architecture.committed(new) == "new"
