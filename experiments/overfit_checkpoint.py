"""Run ``experiments/overfit.py`` and save the model it trained as a StrongPose checkpoint.

The checkpoint has what ``strongpose.load`` / ``python -m strongpose.evaluate`` need: the weights, the
codec and backbone specs, and the run config (``strongpose.checkpoint.CONFIG_KEY``) composed from the
packaged configs with overfit.py's settings (ResNet-18 neck 128, stride 8, its input size). Used to
measure the test-time options on a model that has memorised its images (experiments/RESULTS.md).

    python experiments/overfit_checkpoint.py --out overfit.ckpt --images 11 --steps 300
    python -m strongpose.evaluate ckpt_path=overfit.ckpt test.flip=true
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import overfit  # noqa: E402 - experiments/ is on sys.path
from strongpose.checkpoint import CONFIG_KEY  # noqa: E402
from strongpose.train import CONFIG_DIR, resolved_config  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--out", required=True, help="checkpoint to write")
    # the whole command line checked first, overfit.py's options included: --help is answered (and a wrong option
    # refused) before anything runs. The parser of --out alone had no -h (left to overfit.py's), so its check of
    # the required --out stopped --help
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                            parents=[own, overfit.parser(add_help=False)]).parse_args(argv)
    args, rest = own.parse_known_args(argv)
    run = overfit.main(rest)
    module = run.module
    # overfit.py builds ResNetBackbone(arch, stride) with its defaults (neck 128) and default heads
    backbone = module.net.backbone
    overrides = [f"backbone={backbone.arch}", f"backbone.neck_channels={backbone.out_channels}",
                 f"codec.stride={module.codec.stride}", f"codec.disk_radius={module.codec.disk_radius}",
                 f"data.input_size={run.input_size}", "logger=none", "paths.output_dir=null"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = resolved_config(compose("train", overrides=overrides))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the layout Lightning writes (state_dict, hyper_parameters) plus the run config
    torch.save({"state_dict": {k: v.cpu() for k, v in module.state_dict().items()},
                "hyper_parameters": dict(module.hparams), CONFIG_KEY: cfg}, out)
    print(f"checkpoint={out} AP={run.stats['AP']:.3f}")
    return out


if __name__ == "__main__":
    main()
