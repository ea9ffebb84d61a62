import pytest

from strongpose.skeleton import COCO_PERSON, CROWDPOSE, Skeleton, get_skeleton


@pytest.mark.parametrize("sk", [COCO_PERSON, CROWDPOSE])
def test_flip_index_is_an_involution_swapping_sides(sk):
    fi = sk.flip_index
    assert sorted(fi) == list(range(sk.num_keypoints))
    for k, name in enumerate(sk.keypoints):
        assert fi[fi[k]] == k
        other = sk.keypoints[fi[k]]
        if name.startswith("left_"):
            assert other == "right_" + name[5:]
        elif not name.startswith("right_"):
            assert other == name


def test_coco_edges():
    assert COCO_PERSON.num_keypoints == 17
    assert len(COCO_PERSON.edges(redundant=False)) == 16
    assert len(COCO_PERSON.directed_edges()) == 2 * (16 + 4)
    # that the tree connects every keypoint, Skeleton checks when it is made (test_bad_skeletons_are_rejected)


@pytest.mark.parametrize("sk", [COCO_PERSON, CROWDPOSE])
def test_directed_edge_flip_index_maps_edges_to_mirrored_edges(sk):
    edges = sk.directed_edges()
    perm = sk.directed_edge_flip_index()
    fi = sk.flip_index
    for e, (a, b) in enumerate(edges):
        assert edges[perm[e]] == (fi[a], fi[b])


def test_bad_skeletons_are_rejected():
    with pytest.raises(ValueError, match="unknown keypoint"):
        Skeleton("x", ("a", "b"), (), (("a", "c"),))
    with pytest.raises(ValueError, match="needs 1 edges"):
        Skeleton("x", ("a", "b"), (), ())
    with pytest.raises(ValueError, match=r"do not connect \['d'\] to 'a' \(a cycle elsewhere\?\)"):
        Skeleton("x", ("a", "b", "c", "d"), (), (("a", "b"), ("b", "c"), ("c", "a")), sigmas=(0.05,) * 4)
    with pytest.raises(ValueError, match=r"flip_pairs name \['a'\] more than once"):
        Skeleton("x", ("a", "b", "c"), (("a", "b"), ("a", "c")), (("a", "b"), ("b", "c")), sigmas=(0.05,) * 3)
    with pytest.raises(ValueError, match=r"edges are not left/right symmetric: edge \[l, c\] has no mirror \[r, c\]"):
        Skeleton("x", ("l", "r", "c"), (("l", "r"),), (("l", "c"), ("l", "r")), sigmas=(0.05,) * 3)
    with pytest.raises(ValueError, match="needs one positive OKS sigma per keypoint"):
        Skeleton("x", ("a", "b"), (), (("a", "b"),))  # a skeleton without sigmas failed at the first AP
    with pytest.raises(ValueError, match=r"needs at least 2 keypoints joined by an edge, got \['centre'\]"):
        Skeleton("x", ("centre",), (), (), sigmas=(0.05,))  # the codec's edge tables failed with an IndexError
    with pytest.raises(ValueError, match="unknown skeleton"):
        get_skeleton("horse")


def test_sides_named_but_not_paired_are_warned_about():
    with pytest.warns(UserWarning, match=r"\['l_foot', 'r_foot'\] are named as left / right keypoints but are in no "
                                         r"flip pair"):
        Skeleton("x", ("head", "l_hand", "r_hand", "l_foot", "r_foot"), (("l_hand", "r_hand"),),
                 (("head", "l_hand"), ("head", "r_hand"), ("head", "l_foot"), ("head", "r_foot")),
                 sigmas=(0.05,) * 5)
    assert get_skeleton("crowdpose") is CROWDPOSE


def test_a_skeleton_without_colours_is_drawn_by_side():
    with pytest.warns(UserWarning, match="in no flip pair"):
        sk = Skeleton("x", ("head", "l_hand", "RHand", "left_foot"), (), (("head", "l_hand"), ("head", "RHand"),
                                                                        ("head", "left_foot")), sigmas=(0.05,) * 4)
    assert sk.colors == ((0, 200, 0), (255, 128, 0), (0, 128, 255), (255, 128, 0))
    assert COCO_PERSON.colors[COCO_PERSON.index("left_wrist")] == (255, 128, 0)
