"""Frame and segment boundaries of a token sequence, in the order a mixer reads it: the ``layout`` a backbone hands
to mixers that declare ``takes_layout`` (e.g. ``lact`` aligning its fast-weight chunks to frames or segments).

A mixer only sees a flat ``[B, T, D]`` sequence; the backbone knows where its frames and segments are. The
segmented DiT (:class:`seqmix.backbones.layout.VideoLayout`) reads ``[text_0, video_0, text_1, video_1, ...]``; its
:meth:`~seqmix.backbones.layout.VideoLayout.token_spans` puts each text slot at the start of its segment's span and
of the span of that segment's first frame (text is read first and belongs to the frames that follow it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

__all__ = ["TokenSpans", "aligned_bounds"]


def _check_bounds(name: str, bounds: Sequence[int]) -> tuple[int, ...]:
    b = tuple(bounds)
    if (len(b) < 2 or any(not isinstance(x, int) or isinstance(x, bool) for x in b) or b[0] != 0
            or any(e <= s for s, e in zip(b, b[1:]))):
        raise ValueError(f"TokenSpans.{name} must be strictly increasing ints from 0 to T, e.g. (0, 5, 9), got {b}")
    return b


@dataclass(frozen=True)
class TokenSpans:
    """Cumulative boundaries ``(0, b_1, ..., T)`` of the frames and of the segments of a sequence of ``T`` tokens, in
    read order (span ``i`` is tokens ``[b_i, b_{i+1})``). Every segment boundary is a frame boundary.

    Attributes:
        frames: boundaries of the frame spans.
        segments: boundaries of the segment spans.
        source_index: optional ``[T]`` long tensor, for each read-order token its position in the order the
            public ttt-video-dit code computes per-token rates in (its storage order: the text of every segment,
            then the video; the same map for the reversed pass). Only TTT's ``eta_order="public"`` reads it; not
            part of equality or hashing.
    """

    frames: tuple[int, ...]
    segments: tuple[int, ...]
    source_index: Any = field(default=None, compare=False, hash=False, repr=False)

    #: The units :meth:`bounds` knows.
    UNITS: ClassVar[tuple[str, ...]] = ("frame", "segment")

    def __post_init__(self) -> None:
        frames, segments = _check_bounds("frames", self.frames), _check_bounds("segments", self.segments)
        if frames[-1] != segments[-1]:
            raise ValueError(f"TokenSpans: frames end at {frames[-1]} tokens, segments at {segments[-1]}")
        if self.source_index is not None and tuple(self.source_index.shape) != (frames[-1],):
            raise ValueError(f"TokenSpans: source_index must be [T] = [{frames[-1]}], got "
                             f"{tuple(self.source_index.shape)}")
        if not set(segments) <= set(frames):
            raise ValueError(f"TokenSpans: segment boundaries {sorted(set(segments) - set(frames))} are not frame "
                             "boundaries")
        object.__setattr__(self, "frames", frames)
        object.__setattr__(self, "segments", segments)

    @property
    def total(self) -> int:
        """T, tokens of the sequence."""
        return self.frames[-1]

    def bounds(self, unit: str) -> tuple[int, ...]:
        """The boundaries of ``unit`` (``"frame"`` or ``"segment"``)."""
        if unit == "frame":
            return self.frames
        if unit == "segment":
            return self.segments
        raise ValueError(f"unknown span unit {unit!r}; valid: {', '.join(self.UNITS)}")

    def mirrored(self) -> "TokenSpans":
        """The spans of the token-reversed sequence (``x.flip(1)``): boundaries ``T - b`` in ascending order."""
        T = self.total
        return TokenSpans(tuple(T - b for b in reversed(self.frames)), tuple(T - b for b in reversed(self.segments)))


def aligned_bounds(name: str, layout, unit: str, T: int, *, knob: str, what: str, fallback: str):
    """The span boundaries a mixer aligned by ``knob=unit`` uses for a call on ``T`` tokens: None for ``"tokens"``
    (fixed sizes; a layout is then accepted and ignored), else the ``unit`` spans of ``layout``, checked.

    ``what`` names what the spans become (``"chunks"``, ``"blocks"``), ``fallback`` the fixed-size setting to use
    without a layout (``"a chunk_size"``), both for the error messages."""
    if layout is not None and not isinstance(layout, TokenSpans):
        raise TypeError(f"{name}: layout must be a seqmix.layers.spans.TokenSpans (frame / segment boundaries) or "
                        f"None, got {type(layout).__name__}")
    if unit == "tokens":
        return None
    if layout is None:
        raise ValueError(f"{name}: {knob}={unit!r} takes its {what} from the layout's {unit}s; pass "
                         f"layout=TokenSpans(...) (the DiT does), or use {knob}='tokens' with {fallback}")
    if layout.total != T:
        raise ValueError(f"{name}: the layout spans {layout.total} tokens, the input has {T}")
    return layout.bounds(unit)
