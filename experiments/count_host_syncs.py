"""Host waits per training step (``.item()``, ``bool(tensor)``, ``nonzero``, ``self.log`` of a Python number...)
of a real ``Trainer.fit``, counted on any device, with the code that asked for each (``strongpose.host_syncs``).

On a GPU each one makes the host wait for everything queued so far; at a step's end that idles the GPU
while the host fetches the next batch and runs the loop. By default the GPU preset (``trainer=gpu``: its
logging interval; fp32 instead of bf16 on a CPU) runs on the CPU with a tiny ResNet-18 and the embedded
sample (6 steps an epoch); extra arguments are Hydra overrides of the training config:

    python experiments/count_host_syncs.py                     # the GPU preset's waits per step
    python experiments/count_host_syncs.py trainer.log_every_n_steps=1 callbacks.ema=null
    python experiments/count_host_syncs.py --device cuda       # the GPU preset itself, on a GPU

Prints each step's count, then where the waits of the steps that did not log come from; the last line:

    steps=N logging_steps=L host_syncs_per_step=X max=Y
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["WANDB_MODE"] = "disabled"

from hydra import compose, initialize_config_dir  # noqa: E402

from strongpose.host_syncs import CountHostSyncs  # noqa: E402
from strongpose.train import CONFIG_DIR, train  # noqa: E402

SMALL = ("logger=none", "backbone=resnet18", "data.input_size=64", "data.batch_size=2", "data.num_workers=0",
         "trainer.check_val_every_n_epoch=100", "trainer.enable_model_summary=false",
         "+callbacks.host_syncs._target_=strongpose.host_syncs.CountHostSyncs",
         "+callbacks.host_syncs.report=false")
ON_THE_CPU = ("trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.benchmark=false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the embedded sample's 11 images")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args, overrides = parser.parse_known_args()
    device = ON_THE_CPU if args.device == "cpu" else ()
    with tempfile.TemporaryDirectory() as out, initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=gpu", *device, *SMALL, f"trainer.max_epochs={args.epochs}",
                                          f"paths.output_dir={out}", *overrides])
        _, objects = train(cfg)
    (counted,) = [c for c in objects["callbacks"] if isinstance(c, CountHostSyncs)]
    print("\n".join(counted.summary()))


if __name__ == "__main__":
    sys.exit(main())
