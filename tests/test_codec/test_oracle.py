"""The oracle benchmark on a slice of real COCO val2017 annotations (needs ../shared)."""

from pathlib import Path

import oracle_ap as oracle  # experiments/ (pytest's pythonpath)
import pytest

from strongpose.skeleton import COCO_PERSON

ROOT = Path(__file__).resolve().parents[2]
ANN = ROOT.parent / "shared" / "data" / "coco-val-part" / "person_keypoints_val2017_part.json"

pytestmark = pytest.mark.skipif(not ANN.is_file(), reason=f"needs the shared COCO val annotations at {ANN}")


def test_oracle_ap_on_val_slice():
    stats = oracle.run(str(ANN), stride=8, max_images=80, quiet=True)
    assert stats["images"] == 80
    assert stats["AP"] >= 0.93, stats
    tree_only = oracle.run(str(ANN), stride=8, long_range=False, max_images=80, quiet=True)
    assert tree_only["AP"] < stats["AP"], (tree_only, stats)  # long-range offsets are worth their keep
    # the default snap radius (8 px) against the disk radius (32 px), which took neighbours' keypoints:
    # 0.968 against 0.959 on these 80 images, with the peak refinement of then (the peak cell's offset alone)
    before = {"decode_refine_radius": 0.0}
    near = oracle.run(str(ANN), stride=8, max_images=80, quiet=True, **before)
    far = oracle.run(str(ANN), stride=8, max_images=80, quiet=True, decode_snap_radius=None, **before)
    assert far["AP"] < near["AP"] - 0.005, (far, near)
    assert stats["AP"] >= near["AP"], (stats, near)  # the vote-mean refinement holds it


def test_oracle_cli_takes_a_skeleton_from_a_yaml_file(tmp_path, capsys):
    """A codec config as the README writes one for your own skeleton (here COCO's, under another name)."""
    yaml = tmp_path / "own.yaml"
    pairs = lambda edges: "[" + ", ".join(f"[{a}, {b}]" for a, b in edges) + "]"  # noqa: E731
    yaml.write_text(f"""defaults:
  - default
  - _self_
skeleton:
  _target_: strongpose.skeleton.Skeleton
  name: own
  keypoints: [{', '.join(COCO_PERSON.keypoints)}]
  flip_pairs: {pairs(COCO_PERSON.flip_pairs)}
  tree_edges: {pairs(COCO_PERSON.tree_edges)}
  redundant_edges: {pairs(COCO_PERSON.redundant_edges)}
  sigmas: {list(COCO_PERSON.sigmas)}
""")
    oracle.main(["--ann", str(ANN), "--max-images", "10", "--skeleton", str(yaml)])
    own = capsys.readouterr().out.strip().splitlines()[-1].split()[0]
    oracle.main(["--ann", str(ANN), "--max-images", "10"])
    assert own == capsys.readouterr().out.strip().splitlines()[-1].split()[0]  # AP=... as COCO's
    with pytest.raises(SystemExit):
        oracle.main(["--ann", str(ANN), "--skeleton", "horse"])
    assert "skeleton 'horse' is neither a built-in one" in capsys.readouterr().err
    named = tmp_path / "named.yaml"
    named.write_text("defaults:\n  - default\n  - _self_\nskeleton: crowdpose\n")  # a built-in's name
    assert oracle.skeleton_arg(str(named)) == "crowdpose"
    strided = tmp_path / "strided.yaml"
    strided.write_text("skeleton: coco\nstride: 16\n")
    with pytest.raises(SystemExit):  # not silently the stride-8 ceiling
        oracle.main(["--ann", str(ANN), "--skeleton", str(strided)])
    assert "sets stride: give them as --stride" in capsys.readouterr().err


def test_oracle_cli_prints_summary_line(capsys):
    oracle.main(["--ann", str(ANN), "--stride", "16", "--max-images", "20"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    keys = [item.split("=")[0] for item in last.split()]
    assert keys == ["AP", "AP50", "AP75", "APM", "APL", "AR", "encode_ms", "decode_ms"]
    assert float(last.split()[0].split("=")[1]) > 0.8
