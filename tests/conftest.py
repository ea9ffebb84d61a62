"""Shared test setup: no network, no W&B, one thread per xdist worker, and tiny configs and batches."""

from __future__ import annotations

import os
import subprocess
import sys

# before anything imports wandb or albumentations
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from torch.utils.data import default_collate  # noqa: E402

from strongpose.codec import StrongPoseCodec  # noqa: E402
from strongpose.data.coco import OFFSET_DTYPE  # noqa: E402
from strongpose.skeleton import COCO_PERSON, CROWDPOSE  # noqa: E402
from strongpose.train import CONFIG_DIR  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # `make test` runs two workers on two cores

# CPU, no logger, one small batch of the embedded sample: what every training test starts from
TINY = (
    "trainer=cpu",
    "logger=none",
    "data.input_size=64",
    "data.batch_size=2",
    "data.max_train_images=2",
    "data.max_val_images=2",
    "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1",
    "trainer.enable_model_summary=false",
)


def compose_train(overrides: Sequence[str] = (), output_dir: str | Path | None = None, tiny: bool = True,
                  return_hydra_config: bool = False) -> DictConfig:
    """The training config as ``python -m strongpose.train`` would build it, with ``TINY`` first."""
    extra = [f"paths.output_dir={output_dir}"] if output_dir is not None else []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[*(TINY if tiny else ()), *extra, *overrides],
                       return_hydra_config=return_hydra_config)


def synthetic_batch(codec: StrongPoseCodec, batch_size: int = 2, size: int = 64, people: int = 2,
                    seed: int = 0) -> dict:
    """A batch shaped like the data module's: random uint8 images, random people encoded by ``codec`` (with
    the dataset's float16 offsets)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(batch_size):
        # people in the lower right half, a crowd region in the top left corner, beyond the disks
        kp = size / 2 + torch.rand(people, codec.num_keypoints, 3, generator=g) * (size / 2 - 1)
        kp[..., 2] = 2.0
        kp[0, :3, 2] = 0.0  # a few unlabelled keypoints
        ignore = torch.zeros(size, size, dtype=torch.bool)
        ignore[: size // 4, : size // 4] = True
        items.append({"image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
                      "targets": codec.encode(kp, (size, size), ignore_mask=ignore, offset_dtype=OFFSET_DTYPE),
                      "meta": {"image_id": i, "orig_size": torch.tensor([size, size]),
                               "affine": torch.eye(2, 3)}})
    return default_collate(items)


def run_cli(module: str, args: Sequence[str], cwd: str | Path, timeout: int = 400,
            importable: Sequence[str | Path] = (), check: bool = True) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in ``cwd``: W&B off, one thread per process unless OMP_NUM_THREADS says
    otherwise, the ``importable`` folders on PYTHONPATH (test callbacks named in ``+callbacks...``
    overrides, also for Lightning's DDP children); with ``check``, fails the test with the output's tail
    unless it succeeds."""
    env = {"OMP_NUM_THREADS": "1", **os.environ, "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [*map(str, importable), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # a hang ends here
    assert not check or done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done


def run_train_cli(args: Sequence[str], cwd: str | Path, timeout: int = 400,
                  importable: Sequence[str | Path] = ()) -> subprocess.CompletedProcess:
    """:func:`run_cli` of ``strongpose.train``, which must succeed."""
    return run_cli("strongpose.train", args, cwd, timeout, importable)


CROWD_INDICES = (0.05, 0.5, 0.9)


def to_crowdpose(coco: dict) -> dict:
    """COCO person annotations as CrowdPose writes them: its 14 keypoints (head from the nose, neck between the
    shoulders when both are labelled), ``num_keypoints``, ``bbox``, ``iscrowd``; no ``area``, no segmentation; a
    ``crowdIndex`` on each image (here 0.05, 0.5, 0.9 in turn: one of each crowd-index group)."""
    index = {name: i for i, name in enumerate(COCO_PERSON.keypoints)}
    people = []
    for ann in coco["annotations"]:
        kp = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        rows = [kp[index[name]] for name in CROWDPOSE.keypoints[:12]]
        rows.append(kp[index["nose"]])
        left, right = kp[index["left_shoulder"]], kp[index["right_shoulder"]]
        rows.append(np.r_[(left[:2] + right[:2]) / 2, 2.0] if left[2] > 0 and right[2] > 0 else np.zeros(3))
        flat = np.stack(rows).reshape(-1)
        people.append({"id": ann["id"], "image_id": ann["image_id"], "category_id": 1, "bbox": ann["bbox"],
                       "iscrowd": 0, "keypoints": flat.tolist(), "num_keypoints": int((flat[2::3] > 0).sum())})
    images = [{**image, "crowdIndex": CROWD_INDICES[i % len(CROWD_INDICES)]} for i, image in enumerate(coco["images"])]
    return {"images": images, "annotations": people,
            "categories": [{"id": 1, "name": "person", "supercategory": "person",
                            "keypoints": list(CROWDPOSE.keypoints),
                            "skeleton": [[CROWDPOSE.keypoints.index(a) + 1, CROWDPOSE.keypoints.index(b) + 1]
                                         for a, b in CROWDPOSE.tree_edges]}]}


@pytest.fixture(scope="session")
def crowdpose_annotations():
    """:func:`to_crowdpose` as a fixture."""
    return to_crowdpose


@pytest.fixture(scope="session")
def train_cli():
    """:func:`run_train_cli` as a fixture (session-scoped: module-scoped fixtures use it too)."""
    return run_train_cli


@pytest.fixture(scope="session")
def cli():
    """:func:`run_cli` as a fixture: ``cli("strongpose.evaluate", args, cwd, check=False)``."""
    return run_cli


@pytest.fixture(scope="session")
def train_config():
    """:func:`compose_train` as a fixture (session-scoped: module-scoped fixtures use it too): test modules
    cannot rely on ``import conftest`` (every conftest.py outside a package is module "conftest", so
    another folder's may shadow this one)."""
    return compose_train


@pytest.fixture
def codec() -> StrongPoseCodec:
    return StrongPoseCodec(stride=8, disk_radius=12.0)


@pytest.fixture
def make_batch():
    """:func:`synthetic_batch` itself, for tests that need batches of other shapes."""
    return synthetic_batch


@pytest.fixture
def batch(codec: StrongPoseCodec) -> dict:
    return synthetic_batch(codec)
