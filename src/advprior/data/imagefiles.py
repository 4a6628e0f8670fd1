"""A robust image-file dataset shared by the ImageNet and folder data modules.

Bad-file handling (``on_bad_image``):

* ``"skip"`` (default): an undecodable file never reaches a batch. A warning names its path, it is
  listed in ``dataset.bad_files``, and the total is logged at the end of every pass over an
  ``ImageFileLoader``.
* ``"error"``: the first undecodable file raises ``BadImageError`` naming the path and the switch
  ``data.on_bad_image=skip``.

Two layers make that hold:

1. A preflight ``check`` at construction, over exactly the samples given (callers pass only the subset
   in use). ``"decode"`` decodes every file at 1/8 JPEG scale (~1 ms a file, threaded; catches
   garbage AND truncated files), ``"header"`` only runs PIL ``verify()`` (~0.1 ms; misses truncation),
   ``"none"`` skips it (e.g. for the 1.28M-image train set). Bad files are removed from the sample list
   BEFORE indices are assigned, so ``index`` is the position in the dataset (0..len-1) and every
   position is a valid image. Under ``torch.distributed`` each rank checks 1/world of the chunks and the
   bad lists are all-gathered, so every rank ends up with the same sample list (and does 1/world of the
   work). With a ``cache_dir`` the results are kept per chunk, keyed by the files' names, sizes and
   modification times (``file_stats``), and a later run decodes nothing.
2. A lazy guard in ``__getitem__``: a file that still fails to decode (not preflighted, or changed on
   disk) yields ``None``, which ``SkipNoneCollate`` drops from the batch; the failure is flagged in a
   shared-memory tensor so the main process sees it in ``bad_files`` even with worker processes.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from advprior.identity import files_digest

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ON_BAD_IMAGE = ("skip", "error")
CHECKS = ("decode", "header", "none")

Sample = tuple[str, int]


class BadImageError(RuntimeError):
    """An image file could not be decoded (raised with ``on_bad_image="error"``)."""


def bad_image_message(path: str | os.PathLike, reason: str) -> str:
    return (
        f"Cannot decode image file {path}: {reason}. To skip undecodable files instead of failing, "
        f"set data.on_bad_image=skip."
    )


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files directly inside ``folder`` (not recursive), sorted by name."""
    with os.scandir(folder) as it:
        return sorted(e.path for e in it if e.is_file() and is_image_file(e.name))


def _validate_choice(name: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: got {value!r}, allowed {list(allowed)}")
    return value


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Fully decode ``path`` and convert to ``mode`` (raises whatever PIL raises).

    16-bit images (a 16-bit PNG opens as PIL mode ``I;16``; 32-bit integer ``I`` is read as 16-bit data, as
    PNG and TIFF writers store it) are scaled to 8 bits first: PIL's ``convert`` would clip every value
    above 255, i.e. turn the image white. Precision beyond 8 bits is dropped, as for every JPEG.
    """
    with open(path, "rb") as f:
        img = Image.open(f)
        img.load()  # the full decode while the file is open
        if img.mode == "I" or img.mode.startswith("I;16"):
            wide = np.asarray(img, dtype=np.float64)
            img = Image.fromarray(np.clip(np.rint(wide * (255 / 65535)), 0, 255).astype(np.uint8))
        return img.convert(mode)


def check_image(path: str, check: str = "decode") -> str | None:
    """``None`` if ``path`` passes ``check``, else the reason it fails (exception type and message)."""
    if check == "none":
        return None
    try:
        with Image.open(path) as img:
            if check == "header":
                img.verify()
            else:
                img.draft(None, (1, 1))  # JPEG: decode at 1/8 scale; the whole stream is still read
                img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ... for bad data
        return f"{type(e).__name__}: {e}"
    return None


def file_stats(paths: Sequence[str], num_threads: int | None = None) -> list[tuple[str, int, int]]:
    """``(path, size in bytes, modification time in ns)`` per file, in order; a missing file gets ``-1, -1``.

    The identity of a file list: the decode check's cache key, and what a store key of the data can hash."""
    def stat(p: str) -> tuple[str, int, int]:
        try:
            st = os.stat(p)
        except OSError:
            return (str(p), -1, -1)
        return (str(p), int(st.st_size), int(st.st_mtime_ns))

    threads = num_threads or min(8, os.cpu_count() or 1)
    if threads > 1 and len(paths) > 256:
        with ThreadPoolExecutor(threads) as pool:  # stat is I/O bound (network file systems)
            return list(pool.map(stat, paths))
    return [stat(p) for p in paths]


#: Files per decode-check unit: the unit of caching (one JSON file) and of the split across ranks.
CHECK_CHUNK = 1024


def _check_files(paths: Sequence[str], check: str, threads: int) -> dict[int, str]:
    if threads > 1 and len(paths) > 16:
        with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding
            reasons = list(pool.map(lambda p: check_image(p, check), paths))
    else:
        reasons = [check_image(p, check) for p in paths]
    return {i: r for i, r in enumerate(reasons) if r is not None}


def _check_chunk(paths: Sequence[str], check: str, threads: int, cache_dir: Path | None) -> dict[int, str]:
    """``{position in paths: reason}``, read from ``cache_dir`` when these exact files (names, sizes, times)
    were checked before, else checked and cached."""
    if cache_dir is None:
        return _check_files(paths, check, threads)
    import hashlib
    import json

    from ..utils.io import save_json

    blob = json.dumps([check, file_stats(paths, threads)], separators=(",", ":"))
    entry = cache_dir / f"{check}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"
    try:
        return {int(i): r for i, r in json.loads(entry.read_text())["bad"].items()}
    except (OSError, ValueError, KeyError):
        pass
    bad = _check_files(paths, check, threads)
    save_json({"files": len(paths), "bad": {str(i): r for i, r in bad.items()}}, entry)
    return bad


def find_bad(
    paths: Sequence[str],
    check: str = "decode",
    num_threads: int | None = None,
    distributed: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> dict[int, str]:
    """``{position in paths: reason}`` for the files failing ``check``.

    The files are checked in chunks of ``CHECK_CHUNK``, each on ``num_threads`` threads (default min(8,
    cpu count)). With ``cache_dir``, a chunk's result is stored there under a hash of its file names, sizes
    and modification times and reused while those are unchanged (so a second run decodes nothing). With
    ``distributed=True`` and a process group of several ranks (``advprior.distributed.active()``), rank r
    takes chunks r, r+W, ... and the results are all-gathered: every rank MUST call this together.
    """
    from .. import distributed as dist

    _validate_choice("check", check, CHECKS)
    if check == "none" or not paths:
        return {}
    rank, world = (dist.rank(), dist.world_size()) if distributed and dist.active() else (0, 1)
    threads = num_threads or min(8, os.cpu_count() or 1)
    folder = Path(cache_dir).expanduser() if cache_dir is not None else None
    bad: dict[int, str] = {}
    for k, start in enumerate(range(0, len(paths), CHECK_CHUNK)):
        if k % world == rank:
            found = _check_chunk(paths[start:start + CHECK_CHUNK], check, threads, folder)
            bad.update({start + i: r for i, r in found.items()})
    if world > 1:
        bad = {i: r for part in dist.all_gather_object(bad) for i, r in part.items()}
    return dict(sorted(bad.items()))


class ImageFileDataset(Dataset):
    """Image files with integer labels; yields ``(image, label, index)``.

    Args:
        samples: ``(path, label)`` pairs in dataset order (deterministic order is the caller's job).
        transform: applied to the decoded PIL image (e.g. Resize/CenterCrop/ToTensor -> (C, H, W) in [0,1]).
        on_bad_image: ``"skip"`` or ``"error"`` (see module doc).
        check: preflight at construction: ``"decode"``, ``"header"`` or ``"none"``.
        mode: PIL mode the images are converted to (``"RGB"`` -> 3 channels, ``"L"`` -> 1).
        name: used in log messages.
        distributed: shard the preflight over an initialized process group (all ranks must construct together).
        num_threads: preflight threads (default min(8, cpu count)).
        known_bad: paths already found bad by the caller (reported in ``bad_files``, not re-checked).
        cache_dir: where the preflight caches its results (see ``find_bad``); None: no cache.

    ``index`` is the position in this dataset (after bad files were removed); ``samples[index]`` gives
    the file.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        on_bad_image: str = "skip",
        check: str = "decode",
        mode: str = "RGB",
        name: str = "images",
        distributed: bool = True,
        num_threads: int | None = None,
        known_bad: Sequence[str] = (),
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.on_bad_image = _validate_choice("on_bad_image", on_bad_image, ON_BAD_IMAGE)
        self.check = _validate_choice("check", check, CHECKS)
        self.transform = transform
        self.mode = mode
        self.name = name
        samples = [(str(p), int(y)) for p, y in samples]
        bad = find_bad([p for p, _ in samples], check, num_threads=num_threads, distributed=distributed,
                       cache_dir=cache_dir)
        self._preflight_bad: list[str] = [str(p) for p in known_bad]
        for i, reason in bad.items():
            path = samples[i][0]
            if self.on_bad_image == "error":
                raise BadImageError(bad_image_message(path, reason))
            log.warning("Skipping undecodable image %s (%s) in %s", path, reason, name)
            self._preflight_bad.append(path)
        self.samples: list[Sample] = [s for i, s in enumerate(samples) if i not in bad]
        if bad:
            log.warning(
                "%s: %d of %d image files undecodable and skipped (data.on_bad_image=skip)",
                name, len(bad), len(samples),
            )
        # failures seen lazily in __getitem__, visible across DataLoader worker processes
        self._lazy_bad = torch.zeros(len(self.samples), dtype=torch.uint8)
        if len(self.samples):
            self._lazy_bad.share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, int] | None:
        path, label = self.samples[index]
        try:
            img = load_image(path, self.mode)
        except Exception as e:  # decode failures only; the transform below is outside the guard
            reason = f"{type(e).__name__}: {e}"
            if self.on_bad_image == "error":
                raise BadImageError(bad_image_message(path, reason)) from e
            if not self._lazy_bad[index]:
                log.warning("Skipping undecodable image %s (%s) in %s", path, reason, self.name)
            self._lazy_bad[index] = 1
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, label, index

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.samples]

    def identity(self) -> dict:
        """The served files (path, label, size, mtime; a stat each, no content read), the PIL mode and the
        transform (see ``advprior.data.loaders.DataIdentityMixin``)."""
        return {"files": files_digest(self.samples), "n": len(self.samples), "mode": self.mode,
                "transform": repr(self.transform)}

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    @property
    def preflight_bad(self) -> list[str]:
        """Paths removed before indexing (found bad by the preflight or given as ``known_bad``)."""
        return list(self._preflight_bad)

    @property
    def bad_files(self) -> list[str]:
        """Paths of undecodable files: removed at preflight, then those found while loading."""
        lazy = [self.samples[i][0] for i in torch.nonzero(self._lazy_bad).flatten().tolist()]
        return self._preflight_bad + lazy

    def log_summary(self) -> int:
        """Log the total count of undecodable files skipped so far; returns it."""
        n = len(self.bad_files)
        if n:
            shown = ", ".join(self.bad_files[:5]) + (" ..." if n > 5 else "")
            log.warning("%s: %d undecodable image file(s) skipped in total: %s", self.name, n, shown)
        return n


class SkipNoneCollate:
    """Default collation after dropping ``None`` samples (undecodable files).

    A batch whose samples all failed becomes empty tensors of shape ``(0, *image_shape)``, ``(0,)``, ``(0,)``.
    """

    def __init__(self, image_shape: Sequence[int]) -> None:
        self.image_shape = tuple(int(s) for s in image_shape)

    def __call__(self, batch: list[Any]) -> Any:
        batch = [b for b in batch if b is not None]
        if not batch:
            return (
                torch.empty((0, *self.image_shape)),
                torch.empty(0, dtype=torch.long),
                torch.empty(0, dtype=torch.long),
            )
        return torch.utils.data.default_collate(batch)


class ImageFileLoader(DataLoader):
    """A ``DataLoader`` that logs its dataset's undecodable-file total at the end of each full pass."""

    def __iter__(self) -> Iterator[Any]:
        # Lightning stops after len(loader) batches without exhausting the iterator: log before the last yield
        last = len(self) - 1
        logged = False
        for k, batch in enumerate(super().__iter__()):
            if k == last:
                self._summary()
                logged = True
            yield batch
        if not logged:
            self._summary()

    def _summary(self) -> None:
        summary = getattr(self.dataset, "log_summary", None)
        if callable(summary):
            summary()


def make_loader(
    dataset: ImageFileDataset,
    *,
    batch_size: int,
    num_workers: int = 0,
    shuffle: bool = False,
    seed: int = 0,
    pin_memory: bool = False,
    image_shape: Sequence[int] = (3, 224, 224),
    drop_last: bool = False,
) -> ImageFileLoader:
    """An ``ImageFileLoader`` with ``SkipNoneCollate``; shuffling uses a generator seeded by ``seed``."""
    if batch_size < 1:
        raise ValueError(f"batch_size: got {batch_size}, allowed >= 1")
    if num_workers < 0:
        raise ValueError(f"num_workers: got {num_workers}, allowed >= 0")
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return ImageFileLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=num_workers,
        pin_memory=bool(pin_memory) and torch.cuda.is_available(),  # pinning without CUDA only warns
        collate_fn=SkipNoneCollate(image_shape),
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


def stable_seed(seed: int, key: str) -> list[int]:
    """Entropy for ``numpy.random.default_rng`` from a seed and a string (stable across processes)."""
    import zlib

    return [int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode())]


def resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(str(path)))
