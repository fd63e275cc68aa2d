"""Nested metadata as dotted keys: the one walk every layer uses.

Simvue stores a run's metadata nested; runs, states and the mapping carry it flat, each leaf
under its keys joined with dots (``{"solver": {"tol": 1e-6}}`` is ``{"solver.tol": 1e-6}``,
conventions section 3). Where the layers differ, they differ by a parameter of this walk:

- an empty mapping holds no leaf, so it gives no key; with ``empty_is_leaf`` it is a leaf of
  its own (``{"a": {}}`` stays ``{"a": {}}``), as the server's stored metadata is compared;
- with ``cut_at``, a mapping under a key of that many dots or more is not walked into: its
  key holds None (too deep for a server; the caller leaves it out, and says so);
- ``leaf`` gives the value stored for each leaf (default: the value itself).

A later key wins over an earlier one that flattens to the same name, in the first one's place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["flatten", "leaves"]


def leaves(
    tree: Mapping[Any, Any],
    *,
    empty_is_leaf: bool = False,
    cut_at: int | None = None,
    _path: tuple[Any, ...] = (),
    _dotted: str = "",
) -> Iterator[tuple[tuple[Any, ...], str, Any]]:
    """Each leaf of ``tree`` in order, as ``(keys, dotted key, value)``, by the rules of the
    module docstring (a cut mapping is yielded as the leaf it becomes, with its value)."""
    for key, value in tree.items():
        path = (*_path, key)
        dotted = f"{_dotted}{key}"
        if isinstance(value, Mapping):
            if cut_at is not None and dotted.count(".") >= cut_at:
                yield path, dotted, value
            elif value:
                yield from leaves(
                    value,
                    empty_is_leaf=empty_is_leaf,
                    cut_at=cut_at,
                    _path=path,
                    _dotted=dotted + ".",
                )
            elif empty_is_leaf:
                yield path, dotted, value
        else:
            yield path, dotted, value


def flatten(
    tree: Mapping[Any, Any],
    *,
    empty_is_leaf: bool = False,
    cut_at: int | None = None,
    leaf: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """``tree`` as flat metadata, by the rules of the module docstring."""
    out: dict[str, Any] = {}
    for _keys, dotted, value in leaves(tree, empty_is_leaf=empty_is_leaf, cut_at=cut_at):
        if cut_at is not None and isinstance(value, Mapping) and dotted.count(".") >= cut_at:
            out[dotted] = None  # too deep: the caller leaves it out
        else:
            out[dotted] = leaf(value) if leaf is not None else value
    return out
