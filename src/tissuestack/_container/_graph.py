"""The graph of coordinate systems: elements and coordinate systems as nodes, transformations as edges.

An element ``e`` with a transformation ``T`` to coordinate system ``cs`` gives the edge ``e -> cs`` (``T``) and,
where ``T`` is invertible, the edge ``cs -> e`` (``T⁻¹``). The transformation between any two nodes is the
composition along a shortest path. When several shortest paths exist and their results differ, the answer is
ambiguous and the caller must choose an intermediate node (``via``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tissuestack.errors import (
    AmbiguousPathError,
    NoPathError,
    TransformationError,
    UnknownCoordinateSystemError,
)
from tissuestack.transforms import BaseTransformation, Identity, compose

__all__ = ["Node", "transformation_between"]

_COMPARE_AXES = ("c", "x", "y", "z")
_MAX_PATHS = 64


@dataclass(frozen=True)
class Node:
    kind: str  # "element" or "cs"
    name: str

    def __str__(self) -> str:
        return f"{self.name!r}" if self.kind == "element" else f"[{self.name}]"


Step = tuple[Node, Node, BaseTransformation]


class _Graph:
    def __init__(self, transformations: Mapping[str, Mapping[str, BaseTransformation]]):
        self.out: dict[Node, list[tuple[Node, BaseTransformation | None, BaseTransformation]]] = {}
        for element, per_cs in transformations.items():
            e = Node("element", element)
            for cs, t in per_cs.items():
                c = Node("cs", cs)
                self.out.setdefault(e, []).append((c, None, t))
                # inverse computed lazily: (target, cached inverse, forward)
                self.out.setdefault(c, []).append((e, t, t))

    def has(self, node: Node) -> bool:
        return node in self.out

    def neighbours(self, node: Node):
        for target, inverse_of, t in self.out.get(node, ()):
            if inverse_of is None:
                yield target, t
            else:
                try:
                    yield target, inverse_of.inverse()
                except TransformationError:
                    continue  # not invertible: the edge can only be walked forwards

    def shortest_paths(self, source: Node, target: Node) -> list[list[Step]]:
        if source == target:
            return [[]]
        dist = {source: 0}
        parents: dict[Node, list[tuple[Node, BaseTransformation]]] = {}
        queue = deque([source])
        while queue:
            node = queue.popleft()
            if target in dist and dist[node] >= dist[target]:
                break
            for nxt, t in self.neighbours(node):
                if nxt not in dist:
                    dist[nxt] = dist[node] + 1
                    parents[nxt] = [(node, t)]
                    queue.append(nxt)
                elif dist[nxt] == dist[node] + 1:
                    parents[nxt].append((node, t))
        if target not in dist:
            return []
        paths: list[list[Step]] = []

        def walk(node: Node, suffix: list[Step]) -> None:
            if len(paths) >= _MAX_PATHS:
                return
            if node == source:
                paths.append(list(reversed(suffix)))
                return
            for prev, t in parents[node]:
                walk(prev, [*suffix, (prev, node, t)])

        walk(target, [])
        return paths


def _describe(path: list[Step]) -> str:
    if not path:
        return "(same node)"
    return " -> ".join([str(path[0][0]), *(str(step[1]) for step in path)])


def _compose_path(path: list[Step]) -> BaseTransformation:
    if not path:
        return Identity()
    return compose(*(t for _, _, t in path))


def _resolve(graph: _Graph, source: Node, target: Node) -> tuple[BaseTransformation, list[Step]]:
    paths = graph.shortest_paths(source, target)
    if not paths:
        raise NoPathError(f"no chain of transformations connects {source} and {target}")
    results = [(_compose_path(p), p) for p in paths]
    if len(results) > 1:
        ref = results[0][0].to_affine_matrix(_COMPARE_AXES, _COMPARE_AXES)
        differing = [
            p
            for t, p in results[1:]
            if not np.allclose(t.to_affine_matrix(_COMPARE_AXES, _COMPARE_AXES), ref)
        ]
        if differing:
            listed = "\n  ".join(_describe(p) for _, p in results)
            raise AmbiguousPathError(
                f"{len(results)} shortest chains of transformations connect {source} and {target} and they "
                f"disagree:\n  {listed}\npass via=<coordinate system or element name> to choose one"
            )
    return results[0]


def transformation_between(
    transformations: Mapping[str, Mapping[str, BaseTransformation]],
    source: Node,
    target: Node,
    via: Node | None = None,
) -> BaseTransformation:
    """The transformation from ``source`` to ``target`` through the graph built from ``transformations``.

    ``transformations`` maps each element name to its coordinate system -> transformation mapping.
    """
    graph = _Graph(transformations)
    for node in (source, target, via):
        if node is not None and not graph.has(node):
            if node.kind == "element":
                raise NoPathError(f"unknown element {node.name!r}")
            raise UnknownCoordinateSystemError(f"unknown coordinate system {node.name!r}")
    if via is None:
        return _resolve(graph, source, target)[0]
    first, _ = _resolve(graph, source, via)
    second, _ = _resolve(graph, via, target)
    return compose(first, second)
