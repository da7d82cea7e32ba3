"""Writing image folders (``root/<split>/<class>/<index>.png``)."""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import numpy as np



# --- writing image folders; IDX (MNIST-style) files ---------------------------------------------------

def _safe_dirname(name: str) -> str:
    safe = re.sub(r'[\\/:*?"<>|\x00-\x1f]', "_", str(name)).strip().lstrip(".")
    return safe or "_"


def write_imagefolder(root: str | os.PathLike, images: Any, labels: Sequence[int],
                      label_names: Sequence[str] | None = None, split: str | None = "train",
                      fmt: str = "png") -> str:
    """Write images as ``root/<split>/<label name>/<index>.<fmt>``; returns the split folder.

    `images`: an array ``[N, H, W]`` / ``[N, H, W, C]`` (uint8, or anything PIL's ``fromarray`` takes) or a
    sequence of PIL images/arrays. Folder names are the label names with path-unsafe characters replaced
    by "_" (e.g. "T-shirt/top" -> "T-shirt_top"); note that an image folder loads classes in sorted
    folder-name order, so the ids it assigns are the alphabetical ones.
    """
    from PIL import Image

    labels = [int(v) for v in labels]
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    if label_names is None:
        label_names = [str(i) for i in range(max(labels) + 1 if labels else 0)]
    dirnames = [_safe_dirname(n) for n in label_names]
    if len(set(dirnames)) != len(dirnames):
        raise ValueError(f"Label names {list(label_names)} collide as folder names {dirnames}.")
    out = os.path.join(os.fspath(root), split) if split else os.fspath(root)
    for i, (image, label) in enumerate(zip(images, labels)):
        if not 0 <= label < len(dirnames):
            raise ValueError(f"label {label} of image {i} is outside 0..{len(dirnames) - 1}.")
        folder = os.path.join(out, dirnames[label])
        os.makedirs(folder, exist_ok=True)
        img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        img.save(os.path.join(folder, f"{i:06d}.{fmt}"))
    return out
