"""The oracle benchmark on a slice of real COCO val2017 annotations (needs ../shared)."""

from pathlib import Path

import oracle_ap as oracle  # experiments/ (pytest's pythonpath)
import pytest

ROOT = Path(__file__).resolve().parents[2]
ANN = ROOT.parent / "shared" / "data" / "coco-val-part" / "person_keypoints_val2017_part.json"

pytestmark = pytest.mark.skipif(not ANN.is_file(), reason=f"needs the shared COCO val annotations at {ANN}")


def test_oracle_ap_on_val_slice():
    stats = oracle.run(str(ANN), stride=8, max_images=80, quiet=True)
    assert stats["images"] == 80
    assert stats["AP"] >= 0.93, stats
    tree_only = oracle.run(str(ANN), stride=8, long_range=False, max_images=80, quiet=True)
    assert tree_only["AP"] < stats["AP"], (tree_only, stats)  # long-range offsets are worth their keep


def test_oracle_cli_prints_summary_line(capsys):
    oracle.main(["--ann", str(ANN), "--stride", "16", "--max-images", "20"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    keys = [item.split("=")[0] for item in last.split()]
    assert keys == ["AP", "AP50", "AP75", "APM", "APL", "AR", "encode_ms", "decode_ms"]
    assert float(last.split()[0].split("=")[1]) > 0.8
