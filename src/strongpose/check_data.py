"""``python -m strongpose.check_data annotations=FILE [images=DIR]``: every problem of a COCO keypoint dataset.

The keypoints are checked against a skeleton: ``skeleton=crowdpose`` (a built-in one; default coco), or a codec
config's (``--config-dir DIR codec=NAME``, the skeleton of one's own that training would use).

Prints one line per problem (up to ``max_problems_shown``, then counts by kind) and a summary line; exit
code 0 when clean, 1 when problems were found, 2 when the annotation file cannot be read (or an argument is
wrong). The checks are :func:`strongpose.data.validate.validate_coco`.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from strongpose.config_check import CONFIG_DIR, ConfigError, check_types, print_key_hint, require_non_negative
from strongpose.data.validate import Report, validate_coco
from strongpose.skeleton import Skeleton, get_skeleton

CLEAN, PROBLEMS, UNREADABLE = 0, 1, 2
USAGE = ("usage: python -m strongpose.check_data annotations=FILE [images=DIR] [skeleton=NAME | --config-dir DIR "
         "codec=NAME] [workers=N] [max_problems_shown=N]")


def check(annotations: str, images: str | None = None, skeleton: str | Skeleton = "coco", workers: int = 4,
          max_problems_shown: int = 50) -> int:
    """Validate, print the report and return the exit code; ``skeleton``: a built-in one's name or a Skeleton."""
    if images is not None and not Path(images).is_dir():  # an argument, not 5000 missing images
        print(f"check_data: images folder not found: {images}", file=sys.stderr)
        return UNREADABLE
    try:
        if isinstance(skeleton, str):
            skeleton = get_skeleton(skeleton)
        report = validate_coco(annotations, images, skeleton=skeleton, workers=workers)
    except (FileNotFoundError, ValueError) as err:
        print(f"check_data: {err}", file=sys.stderr)
        return UNREADABLE
    print_report(report, max_problems_shown)
    return PROBLEMS if report.problems else CLEAN


def print_report(report: Report, max_shown: int) -> None:
    for problem in report.problems[:max_shown]:
        print(problem)
    hidden = report.problems[max_shown:]
    if hidden:
        print(f"... and {len(hidden)} more ({_counts(Counter(p.kind for p in hidden))}); max_problems_shown=N "
              "shows more")
    if report.problems:
        print(f"by kind: {_counts(report.by_kind())}")
    print(report.summary(), flush=True)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counter.most_common())


class _Finished(SystemExit):
    """The check ran and exits with its code; a plain SystemExit from Hydra (a bad override) does not."""


TYPES = {"annotations": Path, "images": Path | None, "workers": int, "max_problems_shown": int}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="check_data")
def _hydra_main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "annotations") or cfg.annotations is None:
        print(USAGE, file=sys.stderr)
        raise _Finished(UNREADABLE)
    try:
        check_types(cfg, TYPES)
        require_non_negative("", workers=cfg.workers, max_problems_shown=cfg.max_problems_shown)  # 0: one thread
    except ConfigError as err:
        print(f"check_data: {err}", file=sys.stderr)
        raise _Finished(UNREADABLE) from None
    images = None if cfg.images is None else str(cfg.images)
    skeleton = cfg.skeleton
    if isinstance(skeleton, DictConfig):  # a codec config's Skeleton node (a skeleton of one's own)
        try:
            skeleton = instantiate(skeleton)
        except Exception as err:  # noqa: BLE001 - Hydra wraps the Skeleton's own ValueError
            print(f"check_data: the codec's skeleton cannot be built: {err.__cause__ or err}", file=sys.stderr)
            raise _Finished(UNREADABLE) from err
    # Hydra drops a task's return value; an exception derived from SystemExit passes through it
    raise _Finished(check(str(cfg.annotations), images, skeleton, int(cfg.workers), int(cfg.max_problems_shown)))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (``argv``: the key=value arguments, default ``sys.argv[1:]``); returns the exit
    code. Hydra's own failures (an unknown key) give 2 as well."""
    saved = sys.argv
    if argv is not None:
        sys.argv = [saved[0] if saved else "check_data", *argv]
    try:
        _hydra_main()
    except _Finished as done:
        return int(done.code)
    except SystemExit as err:  # Hydra: bad override (code 1) or --help (code 0)
        if err.code:
            print_key_hint("check_data")  # before sys.argv is restored
        return UNREADABLE if err.code else CLEAN
    finally:
        sys.argv = saved
    return CLEAN  # --cfg job, --info: Hydra printed and did not run the check


if __name__ == "__main__":
    sys.exit(main())
