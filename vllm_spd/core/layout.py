"""How the target's decoder layers map onto stages, and anchors onto stages and depths.

Pure Python, no vLLM: the runner, the head checkpoint and the trainer all use these
rules, so a head trained for one layout is read the same way at inference.

Vocabulary:
- stage s owns the contiguous layers ``[start_s, end_s)``;
- a token's *depth* is the number of stages it has completed (0..n);
- anchor k is the residual stream after layer k-1 (pre-final-norm), anchor 0 is the
  token embedding;
- aggregation *type* a of the draft module reads anchors ``anchors[0..a]``.
"""

from __future__ import annotations

from dataclasses import dataclass


def stage_layer_counts(num_layers: int, num_stages: int, partition: list[int] | None = None) -> list[int]:
    """Layers per stage: ``partition`` if given, else vLLM's pipeline-parallel rule.

    vLLM's rule (``get_pp_indices``) gives the remainder of an uneven split to the
    middle stages first, never the last one, e.g. 8 layers on 3 stages -> [3, 3, 2]
    and 6 on 4 -> [1, 2, 2, 1]. Using the same rule keeps a single-worker run and a
    one-stage-per-rank run identical.
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if num_stages > num_layers:
        raise ValueError(
            f"num_stages={num_stages} exceeds the target's {num_layers} decoder layers; "
            "every stage needs at least one layer"
        )
    if partition is not None:
        if len(partition) != num_stages or sum(partition) != num_layers or min(partition) < 1:
            raise ValueError(
                f"stage_layers={partition} must have {num_stages} positive entries "
                f"summing to the target's {num_layers} layers"
            )
        return list(partition)
    counts = [num_layers // num_stages] * num_stages
    for i in range(2, num_layers % num_stages + 2):
        counts[-i] += 1
    return counts


def balanced_stage_layers(num_layers: int, num_stages: int, extra: list[float]) -> list[int]:
    """Layers per stage that even out per-cycle work when stage s also does ``extra[s]``
    layers' worth of other work (the controller's LM head and draft module, say).

    Decode is memory-bound, so work is measured in bytes read per token: a Qwen3-8B
    layer reads ~0.39 GB, its LM head ~1.24 GB (about 3.2 layers). Minimises the
    largest ``layers + extra`` with at least one layer per stage.

    >>> balanced_stage_layers(36, 2, [0, 3.2])
    [20, 16]
    >>> balanced_stage_layers(36, 4, [0, 0, 0, 3.2])
    [10, 10, 10, 6]
    >>> balanced_stage_layers(8, 4, [0, 0, 0, 0])
    [2, 2, 2, 2]
    """
    if len(extra) != num_stages:
        raise ValueError(f"extra must have {num_stages} entries, got {len(extra)}")
    stage_layer_counts(num_layers, num_stages)   # same range checks
    counts = [1] * num_stages
    for _ in range(num_layers - num_stages):
        # the next layer goes to the stage whose work would stay smallest (ties: earliest)
        s = min(range(num_stages), key=lambda i: (counts[i] + 1 + extra[i], i))
        counts[s] += 1
    return counts


def stage_layer_ranges(num_layers: int, num_stages: int, partition: list[int] | None = None) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` per stage, e.g. (8, 3) -> [(0, 3), (3, 6), (6, 8)]."""
    ranges, start = [], 0
    for count in stage_layer_counts(num_layers, num_stages, partition):
        ranges.append((start, start + count))
        start += count
    return ranges


def default_anchors(num_layers: int, num_stages: int, partition: list[int] | None = None) -> list[int]:
    """One anchor per stage boundary: the embedding plus the output of every stage
    but the last, plus the second-to-last layer's output.

    The reference's ``auto`` rule produced unreachable types and skipped boundaries;
    a 1:1 depth->type map uses every projection, e.g. 36 layers, 4 stages ->
    [0, 9, 18, 27, 35]. Anchors are pre-norm residual streams, so ``num_layers`` itself
    (the final output) is allowed but we keep L-1 like the reference's default.
    """
    ends = [end for _, end in stage_layer_ranges(num_layers, num_stages, partition)]
    anchors = {0, *ends[:-1], max(num_layers - 1, 0)}
    return sorted(a for a in anchors if a <= num_layers)


def validate_anchors(anchors: list[int], num_layers: int) -> None:
    if not anchors or anchors[0] != 0:
        raise ValueError(f"anchors must start with 0 (the embedding), got {anchors}")
    if any(b <= a for a, b in zip(anchors, anchors[1:])):
        raise ValueError(f"anchors must be strictly increasing, got {anchors}")
    if anchors[-1] > num_layers:
        raise ValueError(f"anchor {anchors[-1]} is past the target's {num_layers} layers")


@dataclass(frozen=True)
class StageLayout:
    """Stages, anchors and the depth->aggregation-type map of one deployment.

    >>> lay = StageLayout.build(num_layers=8, num_stages=2, anchors=[0, 4, 7])
    >>> lay.ranges, lay.stage_layers, lay.depth_to_type
    (((0, 4), (4, 8)), [4, 4], (0, 1, 2))
    """

    num_layers: int
    ranges: tuple[tuple[int, int], ...]
    anchors: tuple[int, ...]
    depth_to_type: tuple[int, ...]  # index: depth 0..n

    @classmethod
    def build(cls, num_layers: int, num_stages: int, anchors: list[int] | None = None,
              partition: list[int] | None = None) -> "StageLayout":
        ranges = stage_layer_ranges(num_layers, num_stages, partition)
        anchors = list(anchors) if anchors is not None else default_anchors(num_layers, num_stages, partition)
        validate_anchors(anchors, num_layers)
        depth_to_type = []
        for depth in range(num_stages + 1):
            available = ranges[depth - 1][1] if depth > 0 else 0
            depth_to_type.append(max(a for a, k in enumerate(anchors) if k <= available))
        return cls(num_layers, tuple(ranges), tuple(anchors), tuple(depth_to_type))

    @property
    def num_stages(self) -> int:
        return len(self.ranges)

    @property
    def stage_layers(self) -> list[int]:
        """Layers per stage."""
        return [end - start for start, end in self.ranges]

    @property
    def num_types(self) -> int:
        return len(self.anchors)

    def anchors_of_stage(self, stage: int) -> list[int]:
        """Anchors a token produces while it runs through ``stage``.

        Anchor k (k >= 1) exists after layer k-1 ran, so stage s with layers
        [start, end) produces every k in (start, end]; stage 0 also produces anchor 0.
        """
        start, end = self.ranges[stage]
        return [k for k in self.anchors if (start < k <= end) or (k == 0 and stage == 0)]

    def type_min_depth(self) -> list[int]:
        """Smallest depth that maps to each type (n+1 when no depth does)."""
        n = self.num_stages
        return [min((d for d, t in enumerate(self.depth_to_type) if t == a), default=n + 1)
                for a in range(self.num_types)]
