"""Fashion-MNIST for the demo and the benchmarks: its IDX files (as Debian's ``dataset-fashion-mnist`` installs them)
read, written and exported to image folders."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from ..data import write_imagefolder

__all__ = ["FASHION_MNIST_LABELS", "FASHION_MNIST_DIR", "read_idx", "write_idx", "load_fashion_mnist_idx",
           "fashion_mnist_to_imagefolder"]

FASHION_MNIST_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                        "Bag", "Ankle boot")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs it

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzip-compressed or not (detected from the bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{os.fspath(path)!r} is not an IDX file (bad magic number {data[:4].hex()}).")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    count = int(np.prod(shape)) if ndim else 1
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f"{os.fspath(path)!r}: header says shape {shape} ({count * dtype.itemsize} bytes of data) "
                         f"but the file has {len(data) - offset}; it is truncated or corrupt.")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    return arr.astype(dtype.newbyteorder("=")) if dtype.byteorder == ">" else arr.copy()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as an IDX file (gzip-compressed when `path` ends with .gz)."""
    arr = np.asarray(array)
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
            np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {arr.dtype}.")
    payload = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + \
        arr.astype(np.dtype(_IDX_DTYPES[code])).tobytes()
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def _find_idx(directory: str, stem: str, kind: str) -> str:
    candidates = [f"{stem}-{kind}", f"{stem}.{kind}".replace("-idx", ".idx")]
    for base in candidates:
        for name in (base, base + ".gz"):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(
        f"No {stem}-{kind}[.gz] in {directory!r}. Fashion-MNIST IDX files: train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (optionally .gz); on Debian/Ubuntu "
        f"`apt-get install dataset-fashion-mnist` puts them in {FASHION_MNIST_DIR}.")


def load_fashion_mnist_idx(directory: str | os.PathLike = FASHION_MNIST_DIR):
    """``(train_images [N,28,28] uint8, train_labels [N], test_images, test_labels)`` from a Fashion-MNIST (or
    MNIST) IDX directory. Class names: `FASHION_MNIST_LABELS`."""
    directory = os.fspath(directory)
    out = []
    for stem in ("train", "t10k"):
        images = read_idx(_find_idx(directory, f"{stem}-images", "idx3-ubyte"))
        labels = read_idx(_find_idx(directory, f"{stem}-labels", "idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{stem} files in {directory!r} disagree: images {images.shape}, labels {labels.shape}.")
        out += [images, labels]
    return tuple(out)


def fashion_mnist_to_imagefolder(directory: str | os.PathLike, root: str | os.PathLike, max_train: int | None = None,
                                 max_test: int | None = None, seed: int = 0) -> dict[str, str]:
    """Export Fashion-MNIST IDX files to PNG image folders ``root/train`` and ``root/test`` (seeded subsets if
    `max_train`/`max_test` are given); returns ``{"train": dir, "test": dir}``."""
    train_x, train_y, test_x, test_y = load_fashion_mnist_idx(directory)
    rng = np.random.default_rng(seed)
    out = {}
    for split, x, y, cap in (("train", train_x, train_y, max_train), ("test", test_x, test_y, max_test)):
        if cap is not None and cap < len(x):
            idx = np.sort(rng.choice(len(x), size=cap, replace=False))
            x, y = x[idx], y[idx]
        out[split] = write_imagefolder(root, x, y, FASHION_MNIST_LABELS, split=split)
    return out
