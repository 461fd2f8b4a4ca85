import pytest

from vllm_spd.layout import StageLayout, default_anchors, stage_layer_counts


def test_split_follows_vllm_pipeline_rule():
    from vllm.distributed.utils import get_pp_indices

    for L in (6, 8, 30, 36):
        for n in range(1, min(L, 8) + 1):
            counts = stage_layer_counts(L, n)
            assert [b - a for a, b in (get_pp_indices(L, r, n) for r in range(n))] == counts


def test_default_anchors_one_per_stage_boundary():
    assert default_anchors(36, 4) == [0, 9, 18, 27, 35]
    lay = StageLayout.build(36, 4)
    assert lay.depth_to_type == (0, 1, 2, 3, 4)
    assert lay.anchors_of_stage(0) == [0, 9] and lay.anchors_of_stage(3) == [35]


def test_shared_types_and_min_depth():
    lay = StageLayout.build(32, 8, anchors=[0, 8, 16, 24, 31])
    assert lay.depth_to_type == (0, 0, 1, 1, 2, 2, 3, 3, 4)
    assert lay.type_min_depth() == [0, 2, 4, 6, 8]


@pytest.mark.parametrize("bad", [[1, 4], [0, 4, 4], [0, 99]])
def test_bad_anchors(bad):
    with pytest.raises(ValueError):
        StageLayout.build(8, 2, anchors=bad)


def test_bad_partition():
    with pytest.raises(ValueError, match="stage_layers"):
        stage_layer_counts(8, 2, [3, 3])
    with pytest.raises(ValueError, match="exceeds"):
        stage_layer_counts(4, 5)
