"""WordNet class hierarchy of the ILSVRC2012 classes (from the devkit's ``data/meta.mat``).

Classes are the leaves of the tree, indexed by their position in the SORTED leaf wnids: that is
torchvision's ``ImageFolder``/``ImageNet`` order and the order of the pretrained VGG weights' logits.
The devkit's ``ILSVRC2012_ID`` order (1..1000) is a different order; ``ilsvrc2012_ids`` maps between them.

Tree conventions: depth counts edges from the root (root depth 0). WordNet is a DAG, but meta.mat gives
each synset its children; a synset listed as the child of more than one synset keeps the FIRST parent
in meta.mat's synset order (i.e. ascending ILSVRC2012_ID). If the parent links leave more than one root,
a virtual root ``VIRTUAL_ROOT`` is added above them so that every pair of classes has an LCA.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

VIRTUAL_ROOT = "<root>"

ClassRef = int | str  # a class index (position in sorted leaf wnids) or any node's wnid


class ClassHierarchy:
    """A rooted tree over wnids whose leaves are the classes.

    Args:
        parents: ``{wnid: parent wnid or None}`` for every node (roots map to None).
        leaves: the class wnids; default every node without children. Sorted before use.
        names: optional ``{wnid: human-readable name}``; default the wnid itself.
        ilsvrc2012_ids: optional ``{wnid: ILSVRC2012_ID}`` (devkit numbering).
    """

    def __init__(
        self,
        parents: Mapping[str, str | None],
        leaves: Sequence[str] | None = None,
        names: Mapping[str, str] | None = None,
        ilsvrc2012_ids: Mapping[str, int] | None = None,
    ) -> None:
        parents = dict(parents)
        for node, parent in list(parents.items()):
            if parent is not None and parent not in parents:
                parents[parent] = None  # a parent mentioned only as a parent is a root
        roots = sorted(n for n, p in parents.items() if p is None)
        if not roots:
            raise ValueError("parents: got a graph without a root (every node has a parent); a tree needs one")
        if len(roots) > 1:
            if VIRTUAL_ROOT in parents:
                raise ValueError(f"parents: the name {VIRTUAL_ROOT!r} is reserved for the virtual root")
            log.info("Hierarchy has %d roots; adding virtual root %r above them", len(roots), VIRTUAL_ROOT)
            for r in roots:
                parents[r] = VIRTUAL_ROOT
            parents[VIRTUAL_ROOT] = None
            self.root = VIRTUAL_ROOT
        else:
            self.root = roots[0]
        self._parent: dict[str, str | None] = parents

        has_children = {p for p in parents.values() if p is not None}
        if leaves is None:
            leaves = [n for n in parents if n not in has_children]
        missing = [w for w in leaves if w not in parents]
        if missing:
            raise ValueError(f"leaves: {missing[:5]} are not nodes of the tree (given {len(missing)} unknown)")
        if len(set(leaves)) != len(leaves):
            raise ValueError("leaves: contains duplicate wnids")
        self._wnids: list[str] = sorted(leaves)
        self._index = {w: i for i, w in enumerate(self._wnids)}
        self._names = {w: (names or {}).get(w, w) for w in self._wnids}
        self.ilsvrc2012_ids: dict[str, int] = dict(ilsvrc2012_ids or {})

        # path from the root to every node (root-first, node last); detects cycles
        self._path: dict[str, list[str]] = {}
        for node in parents:
            self._path_of(node)
        self._dist: torch.Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_parents(
        cls,
        parents: Mapping[str, str | None],
        names: Mapping[str, str] | None = None,
        leaves: Sequence[str] | None = None,
    ) -> ClassHierarchy:
        """Build from ``{node: parent}``; classes are the childless nodes unless ``leaves`` is given."""
        return cls(parents, leaves=leaves, names=names)

    @classmethod
    def from_meta_mat(cls, path: str | os.PathLike) -> ClassHierarchy:
        """Parse the ILSVRC2012 devkit ``data/meta.mat`` (``synsets`` struct array).

        Leaves are the synsets with ``num_children == 0``; ``children`` holds ILSVRC2012_IDs.
        """
        import scipy.io

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"meta.mat not found at {path}: expected the ILSVRC2012 devkit file "
                "ILSVRC2012_devkit_t12/data/meta.mat (a 'synsets' struct array)"
            )
        mat = scipy.io.loadmat(str(path), squeeze_me=True)
        if "synsets" not in mat:
            raise ValueError(f"{path}: no 'synsets' variable; is this the ILSVRC2012 devkit meta.mat?")
        synsets = np.atleast_1d(mat["synsets"])
        fields = synsets.dtype.names or ()
        need = ("ILSVRC2012_ID", "WNID", "words", "num_children", "children")
        lacking = [f for f in need if f not in fields]
        if lacking:
            raise ValueError(f"{path}: synsets lack the fields {lacking} (has {list(fields)})")

        id_to_wnid: dict[int, str] = {}
        words: dict[str, str] = {}
        children_ids: list[tuple[str, list[int]]] = []
        leaves: list[str] = []
        for s in synsets:
            sid = int(np.asarray(s["ILSVRC2012_ID"]).reshape(-1)[0])
            wnid = str(s["WNID"]).strip()
            id_to_wnid[sid] = wnid
            words[wnid] = str(s["words"])
            kids = np.atleast_1d(np.asarray(s["children"])).reshape(-1)
            children_ids.append((wnid, [int(k) for k in kids]))
            if int(np.asarray(s["num_children"]).reshape(-1)[0]) == 0:
                leaves.append(wnid)

        parents: dict[str, str | None] = {w: None for w in id_to_wnid.values()}
        extra_parents = 0
        for wnid, kids in children_ids:  # synset order = ascending ID: the first parent wins
            for k in kids:
                if k not in id_to_wnid:
                    raise ValueError(f"{path}: synset {wnid} lists unknown child ILSVRC2012_ID {k}")
                child = id_to_wnid[k]
                if parents[child] is None:
                    parents[child] = wnid
                elif parents[child] != wnid:
                    extra_parents += 1
        if extra_parents:
            log.info("%s: %d extra parent links ignored (first parent kept)", path, extra_parents)
        names = {w: words[w].split(",")[0].strip() for w in words}
        ids = {w: i for i, w in id_to_wnid.items()}
        return cls(parents, leaves=leaves, names=names, ilsvrc2012_ids=ids)

    # ------------------------------------------------------------------ classes
    @property
    def num_classes(self) -> int:
        return len(self._wnids)

    @property
    def wnids(self) -> list[str]:
        """Class wnids in class-index order (sorted)."""
        return list(self._wnids)

    @property
    def names(self) -> list[str]:
        """Class names (first entry of meta.mat ``words``) in class-index order."""
        return [self._names[w] for w in self._wnids]

    @property
    def nodes(self) -> list[str]:
        """Every node of the tree (classes and internal synsets)."""
        return list(self._parent)

    def index(self, wnid: str) -> int:
        """Class index of a leaf wnid."""
        try:
            return self._index[wnid]
        except KeyError:
            raise ValueError(f"wnid: {wnid!r} is not one of the {self.num_classes} classes") from None

    def wnid(self, cls: ClassRef) -> str:
        """Wnid of a class index, or the wnid itself (any node) when given a string."""
        if isinstance(cls, str):
            if cls not in self._parent:
                raise ValueError(f"cls: {cls!r} is not a node of the hierarchy")
            return cls
        i = int(cls)
        if not 0 <= i < self.num_classes:
            raise ValueError(f"cls: got class index {i}, allowed 0..{self.num_classes - 1}")
        return self._wnids[i]

    def parent(self, cls: ClassRef) -> str | None:
        return self._parent[self.wnid(cls)]

    # ------------------------------------------------------------------ tree queries
    def ancestors(self, cls: ClassRef, include_self: bool = True) -> list[str]:
        """Wnids on the path root -> ``cls``, root first; ends with ``cls`` itself unless ``include_self=False``."""
        path = self._path[self.wnid(cls)]
        return list(path) if include_self else list(path[:-1])

    def depth(self, cls: ClassRef) -> int:
        """Edges from the root to ``cls`` (root: 0)."""
        return len(self._path[self.wnid(cls)]) - 1

    def lca(self, a: ClassRef, b: ClassRef) -> str:
        """Wnid of the lowest common ancestor of ``a`` and ``b`` (a node is its own ancestor)."""
        pa, pb = self._path[self.wnid(a)], self._path[self.wnid(b)]
        k = 0
        while k < min(len(pa), len(pb)) and pa[k] == pb[k]:
            k += 1
        return pa[k - 1]

    def lca_depth(self, a: ClassRef, b: ClassRef) -> int:
        return self.depth(self.lca(a, b))

    def distance(self, a: ClassRef, b: ClassRef) -> int:
        """Tree path length between ``a`` and ``b`` in edges (through their LCA)."""
        return self.depth(a) + self.depth(b) - 2 * self.lca_depth(a, b)

    def distance_matrix(self) -> torch.Tensor:
        """(C, C) int64 tensor of pairwise class ``distance``; symmetric, zero diagonal. Cached."""
        if self._dist is None:
            nodes = {n: j for j, n in enumerate(self._parent)}
            member = np.zeros((self.num_classes, len(nodes)), dtype=np.float32)
            for i, w in enumerate(self._wnids):
                member[i, [nodes[n] for n in self._path[w]]] = 1.0
            # common ancestors of two nodes = the root..LCA chain, so their count is lca_depth + 1
            common = np.rint(member @ member.T).astype(np.int64)
            depth = member.sum(1).astype(np.int64) - 1
            dist = depth[:, None] + depth[None, :] - 2 * (common - 1)
            self._dist = torch.from_numpy(dist)
        return self._dist.clone()

    def close_matrix(self, max_distance: int) -> torch.Tensor:
        """(C, C) bool tensor: ``distance(i, j) <= max_distance`` (the diagonal is always True)."""
        if max_distance < 0:
            raise ValueError(f"max_distance: got {max_distance}, allowed >= 0 (edges)")
        return self.distance_matrix() <= max_distance

    # ------------------------------------------------------------------ internals
    def _path_of(self, node: str) -> list[str]:
        if node in self._path:
            return self._path[node]
        chain = [node]
        seen = {node}
        p = self._parent[node]
        while p is not None and p not in self._path:
            if p in seen:
                raise ValueError(f"parents: cycle through {p!r}; the hierarchy must be a tree")
            chain.append(p)
            seen.add(p)
            p = self._parent[p]
        prefix = [] if p is None else self._path[p]
        for n in reversed(chain):
            prefix = prefix + [n]
            self._path[n] = prefix
        return self._path[node]

    def __repr__(self) -> str:
        return f"ClassHierarchy(num_classes={self.num_classes}, nodes={len(self._parent)}, root={self.root!r})"
