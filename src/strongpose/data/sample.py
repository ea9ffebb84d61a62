"""The embedded sample dataset (``strongpose/sample/``): 13 COCO train2017 images under CC BY / BY-SA /
BY-ND licences with their person annotations; see ``sample/CREDITS.md``. Built by ``experiments/make_sample.py``."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def sample_paths() -> tuple[Path, Path]:
    """(images_dir, annotations_json) of the embedded sample."""
    root = Path(str(files("strongpose") / "sample"))
    images, annotations = root / "images", root / "annotations.json"
    if not annotations.is_file():
        raise FileNotFoundError(f"embedded sample missing at {root}: reinstall strongpose or run "
                                "experiments/make_sample.py")
    return images, annotations
