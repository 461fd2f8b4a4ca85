import pytest

from vllm_spd.core.layout import StageLayout, default_anchors, stage_layer_counts


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


def test_balanced_stage_layers_is_optimal_and_valid():
    import itertools

    from vllm_spd.core.layout import balanced_stage_layers

    def compositions(total, parts):
        for cut in itertools.combinations(range(1, total), parts - 1):
            yield [b - a for a, b in zip((0, *cut), (*cut, total))]

    for num_layers, extra in [(8, [0, 0, 2.5]), (12, [0, 0, 0, 3.2]), (9, [1.0, 0, 0.5]), (6, [0, 7.0]),
                              (36, [0, 3.2])]:
        n = len(extra)
        got = balanced_stage_layers(num_layers, n, extra)
        assert sum(got) == num_layers and min(got) >= 1
        best = min(max(c + e for c, e in zip(comp, extra)) for comp in compositions(num_layers, n))
        assert max(c + e for c, e in zip(got, extra)) == pytest.approx(best)
    with pytest.raises(ValueError, match="extra must have 2 entries"):
        balanced_stage_layers(8, 2, [0.0])
