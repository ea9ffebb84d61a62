"""COCOKeypointDataModule: sample by default, workers, determinism, Lightning integration."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from pycocotools.coco import COCO

from strongpose.data import COCOKeypointDataModule

S = 96


def _batches(loader, n: int = 2) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            break
    return out


def _assert_same(a: dict, b: dict) -> None:
    torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
    for key in a["targets"]:
        torch.testing.assert_close(a["targets"][key], b["targets"][key], rtol=0, atol=0)
    torch.testing.assert_close(a["meta"]["image_id"], b["meta"]["image_id"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_datamodule_on_sample(codec, num_workers: int) -> None:
    dm = COCOKeypointDataModule(codec, input_size=S, batch_size=4, num_workers=num_workers,
                                persistent_workers=num_workers > 0)
    dm.setup("fit")
    assert isinstance(dm.val_dataset.coco, COCO)
    seen = 0
    for batch in dm.train_dataloader():
        assert batch["image"].shape[1:] == (3, S, S) and batch["num_skipped"] == 0
        assert batch["meta"]["affine"].shape == (batch["image"].shape[0], 2, 3)
        seen += batch["image"].shape[0]
    assert seen == len(dm.train_dataset)
    ids = torch.cat([b["meta"]["image_id"] for b in dm.val_dataloader()])
    assert sorted(ids.tolist()) == sorted(dm.val_dataset.coco.imgs)


def test_same_seed_same_batches_any_workers(codec) -> None:
    def loader(workers: int, seed: int):
        dm = COCOKeypointDataModule(codec, input_size=S, batch_size=3, num_workers=workers, seed=seed)
        return dm.train_dataloader()

    first = _batches(loader(0, 7))
    for a, b in zip(first, _batches(loader(0, 7))):
        _assert_same(a, b)
    for a, b in zip(first, _batches(loader(2, 7))):  # worker scheduling does not matter
        _assert_same(a, b)
    other = _batches(loader(0, 8))
    assert not torch.equal(first[0]["image"], other[0]["image"])


def test_epochs_differ(codec) -> None:
    dm = COCOKeypointDataModule(codec, input_size=S, batch_size=20, seed=1)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(0)
    epoch0 = next(iter(loader))
    loader.sampler.set_epoch(1)
    epoch1 = next(iter(loader))
    assert not torch.equal(epoch0["image"], epoch1["image"])
    loader.sampler.set_epoch(0)
    _assert_same(epoch0, next(iter(loader)))


def test_paths_come_in_pairs(codec) -> None:
    with pytest.raises(ValueError, match="train_annotations"):
        COCOKeypointDataModule(codec, train_images="somewhere")
    with pytest.raises(ValueError, match="unknown augment"):
        COCOKeypointDataModule(codec, augment={"rotate": 10})


class _Tiny(L.LightningModule):
    """Smallest module that consumes the batch layout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        self.epochs_seen: list[int] = []

    def training_step(self, batch, batch_idx):
        assert batch["image"].dtype == torch.uint8  # pixels; the network normalises them
        pred = torch.nn.functional.avg_pool2d(self.conv(batch["image"].float() / 255), 8)
        return ((pred - batch["targets"]["bhm"]) ** 2 * batch["targets"]["weight"]).mean()

    def validation_step(self, batch, batch_idx):
        assert batch["meta"]["affine"].shape[1:] == (2, 3)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_fit_with_datamodule(codec) -> None:
    dm = COCOKeypointDataModule(codec, input_size=64, batch_size=4)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(_Tiny(), datamodule=dm)
    assert dm.bad_counts["train"] == [0, 16]
    assert trainer.train_dataloader.sampler.epoch == 2  # Lightning set the epoch before each one


@pytest.mark.parametrize("num_workers", [0, 2])
def test_encode_on_device_gives_the_workers_targets(codec, num_workers: int) -> None:
    def module(encode_on: str) -> COCOKeypointDataModule:
        return COCOKeypointDataModule(codec, input_size=S, batch_size=5, num_workers=num_workers, seed=3,
                                      encode_on=encode_on)

    worker, device = module("worker"), module("device")
    pairs = list(zip(_batches(worker.train_dataloader()), _batches(device.train_dataloader())))
    pairs.append((next(iter(worker.val_dataloader())), next(iter(device.val_dataloader()))))
    for a, b in pairs:
        people = b["people"]
        assert "targets" not in b and people.shape[0] == len(b["image"]) and people.shape[2:] == (codec.num_keypoints, 3)
        assert (people[..., 2] > 0).any(-1).sum() == people.shape[0] * people.shape[1] - (people == 0).all(-1).all(
            -1).sum()  # each row a person with a labelled keypoint, or zero padding
        assert set(b["regions"]) == {"bhm", "ignore"} and b["regions"]["bhm"].dtype == torch.bool
        sent = sum(t.nbytes for t in (*a["targets"].values(),))
        assert sum(t.nbytes for t in (b["people"], *b["regions"].values())) < sent / 10
        done = device.finish_targets(b)
        assert set(done["targets"]) == set(a["targets"]) and "people" not in done
        for key, value in a["targets"].items():
            got = done["targets"][key]
            # the workers send offsets as float16; on the device they stay float32
            torch.testing.assert_close(got.to(value.dtype), value, rtol=0, atol=0, msg=key)
        assert worker.finish_targets(a) is a  # worker batches are complete already


def test_encode_on_is_checked(codec) -> None:
    with pytest.raises(ValueError, match="encode_on"):
        COCOKeypointDataModule(codec, encode_on="gpu")


def test_lightning_fit_encodes_on_the_device(codec) -> None:
    dm = COCOKeypointDataModule(codec, input_size=64, batch_size=4, encode_on="device")
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(_Tiny(), datamodule=dm)  # _Tiny reads batch["targets"]: on_after_batch_transfer made them
    assert dm.bad_counts["train"] == [0, 8]


def test_keypoints_cast_to_half_precision_are_refused(codec) -> None:
    dm = COCOKeypointDataModule(codec, input_size=S, batch_size=2, encode_on="device")
    batch = next(iter(dm.val_dataloader()))
    batch["people"] = batch["people"].bfloat16()  # what trainer.precision=bf16-true does to floating inputs
    with pytest.raises(TypeError, match="bf16-true|float32"):
        dm.finish_targets(batch)
