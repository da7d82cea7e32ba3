"""Screening a split before training: every image is opened once; those that cannot be decoded, and those beyond
the size limits (checked from the header, before any pixel is decoded), are dropped and counted, or raise."""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .images import ImageTooLargeError, describe_cell, load_image, to_8bit

logger = logging.getLogger(__name__)

__all__ = ["drop_unreadable"]

_WHAT_TO_DO = ("Check that the files are images PIL can open (not truncated downloads, Git LFS pointer files or "
               "HTML error pages saved under an image name) and that train_dir / validation_dir / dataset_name "
               "point at the right data")


def check_decodable(value: Any, max_aspect_ratio: float | None = None) -> None:
    to_8bit(load_image(value, max_aspect_ratio=max_aspect_ratio))


def _reason(err: Exception) -> str:
    return "beyond the size limits" if isinstance(err, ImageTooLargeError) else "undecodable"


def _find_bad(ds, image_col: str, split: str, on_bad_image: str, workers: int | None,
              max_aspect_ratio: float | None) -> list[tuple[int, str, str, str]]:
    """``(index, where, error, reason)`` of each image that fails; raises on the first with ``on_bad_image="error"``."""

    def check(item):
        index, value = item
        try:
            check_decodable(value, max_aspect_ratio)
            return None
        except Exception as err:  # any decoder failure means "unreadable"
            return index, describe_cell(value, index), f"{type(err).__name__}: {err}", _reason(err)

    workers = workers or max(1, min(4, os.cpu_count() or 1))
    bad: list[tuple[int, str, str, str]] = []
    start = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for batch in ds.select_columns([image_col]).iter(batch_size=256):
            cells = batch[image_col]
            for result in pool.map(check, zip(range(start, start + len(cells)), cells)):
                if result is None:
                    continue
                if on_bad_image == "error":
                    raise ValueError(f"Unreadable image in {split}: {result[1]}: {result[2]}. Fix or remove the file, "
                                     "or use on_bad_image='skip' to drop unreadable images.")
                bad.append(result)
            start += len(cells)
    return bad


def drop_unreadable(ds, image_col: str, split: str, on_bad_image: str, workers: int | None,
                    max_aspect_ratio: float | None = None):
    """Decode every image once; drop (or raise on) those that fail or are beyond the size limits (PIL's
    ``Image.MAX_IMAGE_PIXELS``, `max_aspect_ratio`). The result never changes length later."""
    n = len(ds)
    if n == 0:
        return ds
    bad = _find_bad(ds, image_col, split, on_bad_image, workers, max_aspect_ratio)
    if not bad:
        return ds
    shown = [f"{where}: {why}" for _, where, why, _ in bad[:20]] + (["..."] if len(bad) > 20 else [])
    reasons = ", ".join(f"{count} {reason}" for reason, count in Counter(r for *_, r in bad).most_common())
    logger.warning("skipped %d unreadable image(s) of %d in %s (%s): %s", len(bad), n, split, reasons, shown)
    if len(bad) == n:
        raise ValueError(f"All {n} images of the {split} split are unreadable ({reasons}; first: {shown[0]}): "
                         f"nothing is left to use. {_WHAT_TO_DO}.")
    bad_idx = {i for i, *_ in bad}
    return ds.select([i for i in range(n) if i not in bad_idx])
