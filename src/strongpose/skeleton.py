"""Skeleton: the one place that says which keypoints exist and how they connect.

Heads (channel counts), the codec (targets, decoding), flip augmentation, flip test, evaluation (OKS
sigmas) and drawing all read a :class:`Skeleton`. Edges and flip pairs are written by keypoint *name*;
index forms are derived, so a new skeleton (CrowdPose below) needs no code changes elsewhere.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import cached_property

from strongpose.config_check import ConfigError

Edge = tuple[str, str]


@dataclass(frozen=True)
class Skeleton:
    """Keypoint metadata.

    Attributes:
        name: short identifier (``coco``, ``crowdpose``), also used to check checkpoints.
        keypoints: keypoint names in dataset order (K of them).
        flip_pairs: left/right name pairs swapped by a horizontal flip.
        tree_edges: the kinematic tree (K-1 undirected edges) walked by Pose Plot with mid-range offsets.
        redundant_edges: extra undirected edges (e.g. shoulder-shoulder) that keep people connected
            when a tree keypoint is unlabelled or missed.
        sigmas: COCO OKS sigmas, one per keypoint (required: evaluation and duplicate removal use them;
            COCO's run from 0.025 for the eyes to 0.107 for the hips).
        colors: RGB drawing colour per keypoint (default: orange left, blue right, green centre, by name).
    """

    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[Edge, ...]
    tree_edges: tuple[Edge, ...]
    redundant_edges: tuple[Edge, ...] = ()
    sigmas: tuple[float, ...] = ()
    colors: tuple[tuple[int, int, int], ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        # plain tuples whatever came in (a config's lists: ``_target_: strongpose.skeleton.Skeleton``)
        fields = {"keypoints": tuple(str(k) for k in self.keypoints),
                  "sigmas": tuple(float(s) for s in self.sigmas),
                  "colors": tuple(tuple(int(v) for v in c) for c in self.colors)}
        if not fields["colors"]:  # drawings still tell left from right
            fields["colors"] = _side_colors(fields["keypoints"])
        for group in ("flip_pairs", "tree_edges", "redundant_edges"):
            edges = tuple(tuple(str(n) for n in e) for e in getattr(self, group))
            if any(len(e) != 2 for e in edges):
                raise ConfigError(f"skeleton {self.name!r}: each of {group} must be a pair of keypoint names")
            fields[group] = edges
        for key, value in fields.items():
            object.__setattr__(self, key, value)  # frozen: set once, here
        names = set(self.keypoints)
        if len(names) != len(self.keypoints):
            raise ConfigError(f"skeleton {self.name!r}: duplicate keypoint names")
        if len(self.keypoints) < 2:  # the mid-range offsets, Pose Plot and the codec's edge tables need an edge
            raise ConfigError(f"skeleton {self.name!r}: needs at least 2 keypoints joined by an edge, got "
                             f"{list(self.keypoints)} (StrongPose groups keypoints into people along edges)")
        for group, edges in (("flip_pairs", self.flip_pairs), ("tree_edges", self.tree_edges),
                             ("redundant_edges", self.redundant_edges)):
            for a, b in edges:
                if a not in names or b not in names:
                    raise ConfigError(f"skeleton {self.name!r}: {group} names unknown keypoint in {(a, b)}")
        if self.colors and len(self.colors) != len(self.keypoints):
            raise ConfigError(f"skeleton {self.name!r}: {len(self.colors)} colours for {len(self.keypoints)} keypoints")
        if len(self.tree_edges) != len(self.keypoints) - 1:
            raise ConfigError(f"skeleton {self.name!r}: a tree over {len(self.keypoints)} keypoints needs "
                             f"{len(self.keypoints) - 1} edges, got {len(self.tree_edges)}")
        paired = [name for pair in self.flip_pairs for name in pair]
        if len(paired) != len(set(paired)):  # a keypoint in two pairs (or paired with itself): no swap at all
            twice = sorted({name for name in paired if paired.count(name) > 1})
            raise ConfigError(f"skeleton {self.name!r}: flip_pairs name {twice} more than once")
        if unpaired := [n for n in self.keypoints if _side(n) != "centre" and n not in paired]:
            # a flip would leave them in place: each such channel learns both sides (the drawing colours
            # them by side all the same)
            warnings.warn(f"skeleton {self.name!r}: {unpaired} are named as left / right keypoints but are in no "
                          f"flip pair, so a horizontal flip (augmentation, flip test) does not swap them; add "
                          f"them to flip_pairs (or rename them if they are not sides)", stacklevel=2)
        self.directed_edge_flip_index()  # raises unless a mirrored person's edges are edges too
        unreached = set(self.keypoints) - _reached(self.keypoints[0], self.tree_edges)
        if unreached:  # K - 1 edges that reach every keypoint make a tree (no cycle)
            raise ConfigError(f"skeleton {self.name!r}: tree_edges do not connect {sorted(unreached)} to "
                             f"{self.keypoints[0]!r} (a cycle elsewhere?): Pose Plot could never group them")
        if len(self.sigmas) != len(self.keypoints) or not all(s > 0 for s in self.sigmas):
            raise ConfigError(f"skeleton {self.name!r}: needs one positive OKS sigma per keypoint "
                             f"({len(self.keypoints)}), got {tuple(self.sigmas)}: COCO AP scores keypoints with them")

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    def index(self, name: str) -> int:
        return self.keypoints.index(name)

    @cached_property
    def flip_index(self) -> tuple[int, ...]:
        """Permutation p such that keypoint k of a flipped person is keypoint p[k] of the original."""
        perm = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            ia, ib = self.index(a), self.index(b)
            perm[ia], perm[ib] = ib, ia
        return tuple(perm)

    def edges(self, redundant: bool = True) -> tuple[tuple[int, int], ...]:
        """Undirected edges as index pairs: the tree, then (optionally) the redundant ones."""
        named = self.tree_edges + (self.redundant_edges if redundant else ())
        return tuple((self.index(a), self.index(b)) for a, b in named)

    def directed_edges(self, redundant: bool = True) -> tuple[tuple[int, int], ...]:
        """Each undirected edge in both directions: (a->b) for every edge, then (b->a) for every edge."""
        und = self.edges(redundant)
        return und + tuple((b, a) for a, b in und)

    def directed_edge_flip_index(self, redundant: bool = True) -> tuple[int, ...]:
        """Permutation of :meth:`directed_edges` under a horizontal flip (edge e of the flipped person
        is edge p[e] of the original)."""
        edges = self.directed_edges(redundant)
        lookup = {e: i for i, e in enumerate(edges)}
        fi = self.flip_index
        missing = [(a, b) for a, b in edges if (fi[a], fi[b]) not in lookup]
        if missing:  # the edge set must be symmetric under the flip: name the edge and the mirror to add
            a, b = missing[0]
            names = self.keypoints
            raise ConfigError(f"skeleton {self.name!r}: edges are not left/right symmetric: edge "
                             f"[{names[a]}, {names[b]}] has no mirror [{names[fi[a]]}, {names[fi[b]]}] among the "
                             f"edges (add it, or remove the first)")
        return tuple(lookup[(fi[a], fi[b])] for a, b in edges)


def _reached(start: str, edges: tuple[Edge, ...]) -> set[str]:
    """The keypoints that ``edges`` (undirected) connect to ``start``."""
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        for a, b in edges:
            for here, there in ((a, b), (b, a)):
                if here == node and there not in seen:
                    seen.add(there)
                    todo.append(there)
    return seen


_COCO_NAMES = (
    "nose",            # 0
    "left_eye",        # 1
    "right_eye",       # 2
    "left_ear",        # 3
    "right_ear",       # 4
    "left_shoulder",   # 5
    "right_shoulder",  # 6
    "left_elbow",      # 7
    "right_elbow",     # 8
    "left_wrist",      # 9
    "right_wrist",     # 10
    "left_hip",        # 11
    "right_hip",       # 12
    "left_knee",       # 13
    "right_knee",      # 14
    "left_ankle",      # 15
    "right_ankle",     # 16
)


def _left_right_pairs(names: tuple[str, ...]) -> tuple[Edge, ...]:
    return tuple((n, "right_" + n[5:]) for n in names if n.startswith("left_") and "right_" + n[5:] in names)


def _side(name: str) -> str:
    """``left``, ``right`` or ``centre``, from a name like ``left_wrist``, ``l_wrist``, ``LWrist``."""
    lower = name.lower()
    for side in ("left", "right"):
        if lower.startswith(side) or lower.startswith(side[0] + "_") or (name[:1] == side[0].upper()
                                                                         and name[1:2].isupper()):
            return side
    return "centre"


def _side_colors(names: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    # left = orange, right = blue, centre = green: the usual convention in pose drawings
    palette = {"left": (255, 128, 0), "right": (0, 128, 255), "centre": (0, 200, 0)}
    return tuple(palette[_side(n)] for n in names)


# PersonLab's kinematic tree rooted at the nose (16 edges), plus the redundant edges that the
# oracle study found necessary (shoulder-shoulder, hip-hip, ear-shoulder).
COCO_PERSON = Skeleton(
    name="coco",
    keypoints=_COCO_NAMES,
    flip_pairs=_left_right_pairs(_COCO_NAMES),
    tree_edges=(
        ("nose", "left_eye"), ("left_eye", "left_ear"),
        ("nose", "right_eye"), ("right_eye", "right_ear"),
        ("nose", "left_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
        ("left_shoulder", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
        ("nose", "right_shoulder"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
        ("right_shoulder", "right_hip"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ),
    redundant_edges=(
        ("left_shoulder", "right_shoulder"), ("left_hip", "right_hip"),
        ("left_ear", "left_shoulder"), ("right_ear", "right_shoulder"),
    ),
    sigmas=(0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
            0.107, 0.107, 0.087, 0.087, 0.089, 0.089),
    colors=_side_colors(_COCO_NAMES),
)

_CROWDPOSE_NAMES = (
    "left_shoulder",   # 0
    "right_shoulder",  # 1
    "left_elbow",      # 2
    "right_elbow",     # 3
    "left_wrist",      # 4
    "right_wrist",     # 5
    "left_hip",        # 6
    "right_hip",       # 7
    "left_knee",       # 8
    "right_knee",      # 9
    "left_ankle",      # 10
    "right_ankle",     # 11
    "head",            # 12
    "neck",            # 13
)

CROWDPOSE = Skeleton(
    name="crowdpose",
    keypoints=_CROWDPOSE_NAMES,
    flip_pairs=_left_right_pairs(_CROWDPOSE_NAMES),
    tree_edges=(
        ("head", "neck"),
        ("neck", "left_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
        ("left_shoulder", "left_hip"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
        ("neck", "right_shoulder"), ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
        ("right_shoulder", "right_hip"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ),
    redundant_edges=(("left_shoulder", "right_shoulder"), ("left_hip", "right_hip")),
    sigmas=(0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
            0.079, 0.079),
    colors=_side_colors(_CROWDPOSE_NAMES),
)

SKELETONS = {s.name: s for s in (COCO_PERSON, CROWDPOSE)}


def get_skeleton(name: str) -> Skeleton:
    """Look a built-in skeleton up by name (``codec.skeleton=crowdpose``: the codec calls it for a string). A
    skeleton of your own is a ``Skeleton`` node in a config (README, "Your own skeleton, data and backbone")."""
    try:
        return SKELETONS[name]
    except KeyError:
        raise ConfigError(f"unknown skeleton {name!r}; known: {sorted(SKELETONS)}") from None


def load_skeleton(value: str | Skeleton) -> Skeleton:
    """A built-in skeleton by name, or the :class:`Skeleton` of a YAML file: a Skeleton node (``_target_:
    strongpose.skeleton.Skeleton``, README "Your own skeleton, data and backbone") or a codec config's ``skeleton:``
    node (a built-in's name there too). For commands that take a skeleton without a checkpoint."""
    if isinstance(value, Skeleton):
        return value
    if value in SKELETONS:
        return SKELETONS[value]
    if not os.path.isfile(value):
        raise ConfigError(f"skeleton {value!r} is neither a built-in one ({', '.join(sorted(SKELETONS))}) nor a YAML "
                          f"file")
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(value)
    if "skeleton" in cfg:
        cfg = cfg.skeleton
    if isinstance(cfg, str):
        return get_skeleton(cfg)
    skeleton = instantiate(cfg)
    if not isinstance(skeleton, Skeleton):
        raise ConfigError(f"{value} does not describe a strongpose.skeleton.Skeleton (a _target_ and its fields, or a "
                          f"codec config's skeleton node)")
    return skeleton
