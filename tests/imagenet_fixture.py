"""Builds a tiny fake ImageNet tree (devkit meta.mat + ground truth, train/ and val/ JPEGs) for tests.

Usage: ``info = make_fake_imagenet(tmp_path)``; pass ``info.root`` to ``ImageNetDataModule``.

The tree (class k = k-th sorted leaf wnid, C = num_classes)::

    root R
    |-- A: the leaves with even k
    `-- B: the leaves with odd k, except the largest odd k, which hangs below B1
        `-- B1 (also lists the largest even k as a second child: ignored, A is its first parent)

ILSVRC2012_IDs run opposite to the sorted-wnid order (class k has ID C - k), so a label read through the
ID order instead of the wnid order is wrong. Every image is a flat colour whose red channel encodes its
class: ``red(k) = (40 k + 20) / 255`` (+-0.06 after JPEG and resizing), so tests can check labels from pixels.
Validation image i (1-based) has ILSVRC2012_ID ((i - 1) % C) + 1, i.e. class C - 1 - ((i - 1) % C).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

DEVKIT = "ILSVRC2012_devkit_t12"
FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
          "num_train_images")


@dataclass
class FakeImageNet:
    root: Path
    devkit: Path  # root/ILSVRC2012_devkit_t12
    meta_mat: Path
    ground_truth: Path
    wnids: list[str]  # sorted leaf wnids = class order
    names: list[str]  # class names in class order
    ilsvrc_ids: dict[str, int]  # every synset's ILSVRC2012_ID
    parents: dict[str, str | None]  # first parent of every synset (root: None)
    internal: dict[str, str]  # {"R"|"A"|"B"|"B1": wnid}
    val_files: list[Path]  # in image-number order (ILSVRC2012_val_00000001 first)
    val_labels: list[int]  # class index of each val file
    train_files: dict[str, list[Path]] = field(default_factory=dict)  # wnid -> sorted paths
    corrupt: Path | None = None  # the undecodable val file (truncated JPEG), if any


def red_value(label: int) -> float:
    """Red channel in [0, 1] of every image of class ``label``."""
    return (40 * label + 20) / 255


def write_jpeg(path: Path, label: int, rng: np.random.Generator, size: tuple[int, int] = (40, 32)) -> None:
    """A small JPEG whose red channel is ``red_value(label)`` (+ mild noise); green/blue random levels."""
    w, h = size
    base = np.empty((h, w, 3), dtype=np.float64)
    base[..., 0] = 40 * label + 20
    base[..., 1] = rng.integers(0, 256)
    base[..., 2] = rng.integers(0, 256)
    img = (base + rng.normal(0, 3, base.shape)).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, "JPEG", quality=95)


def truncated_jpeg_bytes(rng: np.random.Generator) -> bytes:
    """A JPEG cut in its entropy-coded data: PIL opens it but fails to decode it."""
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    return data[: len(data) // 2]


def write_meta_mat(path: Path, synsets: list[dict]) -> None:
    """Save ``synsets`` (dicts with FIELDS) as the devkit's (N, 1) ``synsets`` struct array."""
    arr = np.empty((len(synsets), 1), dtype=[(f, object) for f in FIELDS])
    for i, s in enumerate(synsets):
        kids = np.asarray(s["children"], dtype=np.float64).reshape(1, -1) if s["children"] else np.zeros((0, 0))
        arr[i, 0] = (
            np.array([[s["ILSVRC2012_ID"]]], dtype=np.float64),
            s["WNID"],
            s["words"],
            s["gloss"],
            np.array([[s["num_children"]]], dtype=np.float64),
            kids,
            np.array([[s["wordnet_height"]]], dtype=np.float64),
            np.array([[s["num_train_images"]]], dtype=np.float64),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"synsets": arr})


def make_fake_imagenet(
    root: str | Path,
    num_classes: int = 5,
    per_class_train: int = 3,
    num_val: int = 12,
    corrupt_one: bool = True,
    flat_val: bool = False,
    seed: int = 0,
    corrupt_index: int = 2,
) -> FakeImageNet:
    """Write the fake tree under ``root``; the corrupt file (if any) is val image ``corrupt_index + 1``."""
    if num_classes < 2:
        raise ValueError(f"num_classes: got {num_classes}, allowed >= 2")
    root = Path(root)
    rng = np.random.default_rng(seed)
    C = num_classes
    wnids = [f"n{1440000 + 7 * k:08d}" for k in range(C)]  # already sorted
    internal = {"R": "n00001740", "A": "n00002000", "B": "n00002100", "B1": "n00002200"}
    ids = {w: C - k for k, w in enumerate(wnids)}
    ids.update({internal[n]: C + 1 + j for j, n in enumerate(("R", "A", "B", "B1"))})
    names = [f"class{k}" for k in range(C)]

    evens = [k for k in range(C) if k % 2 == 0]
    odds = [k for k in range(C) if k % 2 == 1]
    deep = odds[-1]
    children = {
        internal["R"]: [internal["A"], internal["B"]],
        internal["A"]: [wnids[k] for k in evens],
        internal["B"]: [wnids[k] for k in odds if k != deep] + [internal["B1"]],
        internal["B1"]: [wnids[deep], wnids[evens[-1]]],  # second parent of evens[-1]: ignored
    }
    parents: dict[str, str | None] = {internal["R"]: None}
    for parent in ("R", "A", "B", "B1"):  # ascending ID order: first parent wins
        for child in children[internal[parent]]:
            parents.setdefault(child, internal[parent])
    height = {internal["R"]: 3, internal["A"]: 1, internal["B"]: 2, internal["B1"]: 1}

    synsets = []
    by_id = sorted(ids.items(), key=lambda kv: kv[1])
    for wnid, sid in by_id:
        leaf = wnid in wnids
        kids = [] if leaf else [ids[c] for c in children[wnid]]
        words = f"{names[wnids.index(wnid)]}, synonym" if leaf else f"group {wnid}, grouping"
        synsets.append({
            "ILSVRC2012_ID": sid, "WNID": wnid, "words": words, "gloss": f"gloss of {wnid}",
            "num_children": len(kids), "children": kids, "wordnet_height": 0 if leaf else height[wnid],
            "num_train_images": per_class_train if leaf else 0,
        })
    devkit = root / DEVKIT
    meta = devkit / "data" / "meta.mat"
    write_meta_mat(meta, synsets)

    val_ids = [((i - 1) % C) + 1 for i in range(1, num_val + 1)]
    id_to_class = {C - k: k for k in range(C)}
    val_labels = [id_to_class[s] for s in val_ids]
    gt = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("".join(f"{s}\n" for s in val_ids))

    val_files = []
    for i, label in enumerate(val_labels, start=1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        p = root / "val" / name if flat_val else root / "val" / wnids[label] / name
        write_jpeg(p, label, rng, size=(40 + i % 7, 32 + i % 5))
        val_files.append(p)
    corrupt = None
    if corrupt_one and num_val > 0:
        corrupt = val_files[min(corrupt_index, num_val - 1)]
        corrupt.write_bytes(truncated_jpeg_bytes(rng))

    train_files = {}
    for k, w in enumerate(wnids):
        paths = [root / "train" / w / f"{w}_{j}.JPEG" for j in range(per_class_train)]
        for p in paths:
            write_jpeg(p, k, rng)
        train_files[w] = sorted(paths)
    return FakeImageNet(
        root=root, devkit=devkit, meta_mat=meta, ground_truth=gt, wnids=wnids, names=names, ilsvrc_ids=ids,
        parents=parents, internal=internal, val_files=val_files, val_labels=val_labels,
        train_files=train_files, corrupt=corrupt,
    )


def find_bad_worker(rank: int, world: int, init_file: str, paths: list[str], out: str) -> None:
    """``torch.multiprocessing.spawn`` target: ``find_bad`` on a gloo group, result saved to ``out.<rank>``."""
    import torch

    from advprior.data.imagefiles import find_bad

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(find_bad(paths, "decode"), f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()
