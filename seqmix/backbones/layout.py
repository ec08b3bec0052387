"""Token layout of a segmented long video: segments, attention windows, token orders and RoPE positions.

Dalal et al. 2025 ("One-Minute Video Generation with Test-Time Training", arXiv 2504.05298) cut a video into
3 s segments on the CogVideoX-5B backbone (Yang et al. 2024, arXiv 2408.06072). With CogVideoX's VAE a 3 s
segment is 13 latent frames (12 + 1 prefix frame), and neighbouring attention windows share one latent frame, so
a video of ``S`` segments has ``12 S + 1`` latent frames:

    window i  = latent frames [12 i, 12 i + 13)          (self-attention runs inside a window)
    segment i owns frames [0, 13) if i == 0, else [12 i + 1, 12 i + 13)

The shared frame ``12 i`` (i >= 1) is owned by the EARLIER segment ``i - 1``: the first segment owns 13 frames and
every later one 12, as in the public ttt-video-dit code (``interleave``: "the first scene will have one extra
latent frame"). Ownership only matters for the global layer's token order; attention outputs of a shared frame
are averaged over the two windows that contain it.

Token orders (``N`` tokens per latent frame, ``L`` text tokens per segment slot, ``F`` frames, ``S`` segments):

* storage order (what the model keeps): ``[text_0 .. text_{S-1} | frame_0 .. frame_{F-1}]``, ``S L + F N`` tokens,
  every frame row-major over the ``(h / p, w / p)`` patch grid;
* interleaved order (what the global layer sees): ``[text_0, video_0, text_1, video_1, ...]`` where ``video_i`` are
  the frames owned by segment ``i``;
* reversed order (the backward pass of the global layer): video tokens flipped token by token, the ORDER of the
  text chunks reversed (tokens inside a chunk keep their order). It is defined in storage order and carried into
  interleaved order (``interleave . R . deinterleave``), so the interleaved text slots stay where they are and
  :meth:`VideoLayout.reverse` is an involution. Consequence (same as the public code, which reverses in storage
  order before interleaving): in the reversed sequence the text of the last segment is followed by its own 12
  frames reversed plus the shared frame of the previous segment.

  Why the text chunks are reordered rather than kept in place: the paper states the backward pass for the
  sequence reversed in time and gives no separate rule for text tokens; the public ttt-video-dit code reverses
  the order of the text chunks (``_reverse_text_chunks``) together with the video. That keeps the property the
  interleaved order exists for: in both directions every segment's text is read immediately before frames of its
  own attention window (in the reversed sequence: all of window ``i``'s frames but the one it shares with the
  later window, read just before). Keeping the text chunks in their slots while flipping the video would put
  ``text_i`` before the video of segment ``S - 1 - i``; flipping everything would read each text after its video.
  So the public behaviour is the only one here (tests check the property and the public construction).

Sizes (CogVideoX-5B: 60 x 90 latents, patch 2 -> 30 x 45 = 1350 tokens per frame):

    duration  segments  latent frames  video tokens
    3 s       1         13             17,550
    9 s       3         37             49,950
    18 s      6         73             98,550
    30 s      10        121            163,350
    63 s      21        253            341,550
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Sequence

import torch

from seqmix.layers.spans import TokenSpans

__all__ = ["VideoLayout", "LayoutIndex"]


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"VideoLayout.{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class VideoLayout:
    """How a long video is cut into segments and how its tokens are ordered (see the module docstring).

    Attributes:
        num_segments: S, number of 3 s segments (= attention windows).
        text_len: L, text tokens per segment slot. The model's text input is ``[B, S L, D_text]``; each segment's
            prompt must fit in its slot (:meth:`pack_text` pads, and raises for a prompt longer than ``L``).
        latent_height, latent_width: latent grid (h, w) of one frame (CogVideoX-5B: 60 x 90).
        patch_size: p, spatial patch size; tokens per frame ``N = (h / p) (w / p)``.
        window_frames: latent frames per attention window (13 = 3 s with CogVideoX's VAE).
        overlap_frames: frames shared by neighbouring windows (1); the window stride is ``window - overlap``.
        scene_ids: per-segment scene index (storyboards: scenes made of segments), non-decreasing from 0 in steps
            of 0 or 1, e.g. ``(0, 0, 1, 2, 2)``. Default: one scene. It marks scene boundaries for prompts /
            data code; the model itself treats every segment the same.
    """

    num_segments: int
    text_len: int
    latent_height: int = 60
    latent_width: int = 90
    patch_size: int = 2
    window_frames: int = 13
    overlap_frames: int = 1
    scene_ids: tuple[int, ...] | None = None

    #: Paper durations (seconds) -> number of 3 s segments.
    PAPER_DURATIONS: ClassVar[dict[int, int]] = {3: 1, 9: 3, 18: 6, 30: 10, 63: 21}

    def __post_init__(self) -> None:
        _check_int("num_segments", self.num_segments, 1)
        _check_int("text_len", self.text_len, 0)
        _check_int("latent_height", self.latent_height, 1)
        _check_int("latent_width", self.latent_width, 1)
        _check_int("patch_size", self.patch_size, 1)
        _check_int("window_frames", self.window_frames, 1)
        _check_int("overlap_frames", self.overlap_frames, 0)
        if self.overlap_frames >= self.window_frames:
            raise ValueError(
                f"VideoLayout: overlap_frames={self.overlap_frames} must be < window_frames={self.window_frames}"
            )
        for name, size in (("latent_height", self.latent_height), ("latent_width", self.latent_width)):
            if size % self.patch_size:
                raise ValueError(f"VideoLayout: {name}={size} is not divisible by patch_size={self.patch_size}")
        scenes = (0,) * self.num_segments if self.scene_ids is None else tuple(self.scene_ids)
        if len(scenes) != self.num_segments:
            raise ValueError(f"VideoLayout: scene_ids has {len(scenes)} entries for num_segments={self.num_segments}")
        if any(not isinstance(s, int) or isinstance(s, bool) for s in scenes):
            raise ValueError(f"VideoLayout: scene_ids must be ints, got {scenes}")
        if scenes[0] != 0 or any(b - a not in (0, 1) for a, b in zip(scenes, scenes[1:])):
            raise ValueError(
                f"VideoLayout: scene_ids must start at 0 and grow in steps of 0 or 1 (e.g. (0, 0, 1, 2)), got {scenes}"
            )
        object.__setattr__(self, "scene_ids", scenes)  # normalised, so equal layouts compare / hash equal

    # ------------------------------------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, seconds: int, *, text_len: int = 226, **kw) -> "VideoLayout":
        """The paper's 3/9/18/30/63 s settings (1/3/6/10/21 segments; 13/37/73/121/253 latent frames).

        ``text_len`` defaults to CogVideoX's ``max_text_seq_length`` (226 T5 tokens); other fields (latent size,
        patch, scenes) pass through ``kw`` and default to CogVideoX-5B's 60 x 90 latents with patch 2.
        """
        if seconds not in cls.PAPER_DURATIONS:
            raise ValueError(f"no paper preset for {seconds!r} s; valid: {sorted(cls.PAPER_DURATIONS)}")
        return cls(num_segments=cls.PAPER_DURATIONS[seconds], text_len=text_len, **kw)

    @classmethod
    def from_num_frames(cls, num_frames: int, *, text_len: int, **kw) -> "VideoLayout":
        """The layout whose windows exactly cover ``num_frames`` latent frames (``(F - overlap) / stride`` segments)."""
        window, overlap = kw.get("window_frames", 13), kw.get("overlap_frames", 1)
        _check_int("num_frames", num_frames, 1)
        stride = window - overlap
        if stride <= 0 or (num_frames - overlap) % stride or num_frames < window:
            raise ValueError(
                f"{num_frames} latent frames cannot be cut into windows of {window} frames sharing {overlap}: "
                f"need {window} + {stride} k frames (k >= 0)"
            )
        return cls(num_segments=(num_frames - overlap) // stride, text_len=text_len, **kw)

    @classmethod
    def from_scenes(cls, segments_per_scene: Sequence[int], *, text_len: int, **kw) -> "VideoLayout":
        """A storyboard: ``segments_per_scene[k]`` segments for scene ``k`` (e.g. ``[2, 1, 3]``)."""
        if not segments_per_scene or any(not isinstance(n, int) or n < 1 for n in segments_per_scene):
            raise ValueError(f"segments_per_scene must be a non-empty list of ints >= 1, got {segments_per_scene!r}")
        ids = tuple(k for k, n in enumerate(segments_per_scene) for _ in range(n))
        return cls(num_segments=len(ids), text_len=text_len, scene_ids=ids, **kw)

    # ------------------------------------------------------------------------------------------------- sizes
    @property
    def stride_frames(self) -> int:
        """Frames between the starts of neighbouring windows (12)."""
        return self.window_frames - self.overlap_frames

    @property
    def num_frames(self) -> int:
        """F, latent frames of the whole video: ``stride S + overlap`` (12 S + 1)."""
        return self.stride_frames * self.num_segments + self.overlap_frames

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (h / p, w / p) of one frame."""
        return self.latent_height // self.patch_size, self.latent_width // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        """N = (h / p) (w / p) (1350 for CogVideoX-5B)."""
        gh, gw = self.grid
        return gh * gw

    @property
    def video_tokens(self) -> int:
        """F N."""
        return self.num_frames * self.tokens_per_frame

    @property
    def text_tokens(self) -> int:
        """S L."""
        return self.num_segments * self.text_len

    @property
    def total_tokens(self) -> int:
        """S L + F N (the global layer's sequence length)."""
        return self.text_tokens + self.video_tokens

    @property
    def window_tokens(self) -> int:
        """Tokens of one attention window: L + window_frames N."""
        return self.text_len + self.window_frames * self.tokens_per_frame

    @property
    def num_scenes(self) -> int:
        return self.scene_ids[-1] + 1

    # ------------------------------------------------------------------------------------------ segmentation
    def _check_segment(self, i: int) -> None:
        if not isinstance(i, int) or not 0 <= i < self.num_segments:
            raise IndexError(f"segment index {i!r} out of range for {self.num_segments} segments")

    def window(self, i: int) -> tuple[int, int]:
        """Latent frames ``[start, stop)`` of attention window ``i``: ``[12 i, 12 i + 13)``."""
        self._check_segment(i)
        start = i * self.stride_frames
        return start, start + self.window_frames

    def windows(self) -> list[tuple[int, int]]:
        return [self.window(i) for i in range(self.num_segments)]

    def owned_frames(self, i: int) -> tuple[int, int]:
        """Latent frames ``[start, stop)`` owned by segment ``i`` (a shared frame belongs to the earlier segment)."""
        start, stop = self.window(i)
        return (start if i == 0 else start + self.overlap_frames), stop

    def text_slot(self, i: int) -> tuple[int, int]:
        """Token range ``[start, stop)`` of segment ``i``'s text in the model's text input ``[B, S L, D]``."""
        self._check_segment(i)
        return i * self.text_len, (i + 1) * self.text_len

    def windows_of_frame(self, f: int) -> list[int]:
        """Segments whose attention window contains latent frame ``f`` (one, or two for a shared frame)."""
        if not isinstance(f, int) or not 0 <= f < self.num_frames:
            raise IndexError(f"frame {f!r} out of range for {self.num_frames} latent frames")
        return [i for i in range(self.num_segments) if self.window(i)[0] <= f < self.window(i)[1]]

    def scenes(self) -> list[tuple[int, ...]]:
        """Segments of every scene, e.g. ``[(0, 1), (2,), (3, 4)]``."""
        return [tuple(i for i, s in enumerate(self.scene_ids) if s == k) for k in range(self.num_scenes)]

    # -------------------------------------------------------------------------------------- index tensors
    def index(self) -> "LayoutIndex":
        """All index tensors of this layout (CPU, int64; cached per layout)."""
        return _layout_index(self)

    def frame_windows(self) -> torch.Tensor:
        """``[S, window_frames]`` latent-frame indices of every window."""
        return self.index().frame_windows

    def frame_counts(self) -> torch.Tensor:
        """``[F]`` number of windows containing each latent frame (1, or 2 for a shared frame)."""
        return self.index().frame_counts

    def global_positions(self) -> torch.Tensor:
        """``[S L + F N, 3]`` 3D RoPE positions ``(t, y, x)`` in INTERLEAVED order, ``t`` global (0 .. F-1).

        Text tokens get ``(-1, -1, -1)``: unrotated (see :func:`seqmix.ops.rope.rope_angles`).
        """
        return self.index().global_positions

    def window_positions(self) -> torch.Tensor:
        """``[L + window_frames N, 3]`` positions inside one attention window: text ``-1``, video ``(t, y, x)`` with
        ``t`` restarting at 0 in every window (the same for every window, as CogVideoX sees a 3 s clip)."""
        return self.index().window_positions

    def is_text(self) -> torch.Tensor:
        """``[S L + F N]`` bool, True at text tokens, in interleaved order."""
        return self.index().is_text

    def token_spans(self) -> TokenSpans:
        """Frame and segment boundaries of the interleaved order, for mixers that chunk by them (``takes_layout``).

        Segment span ``i``: text slot ``i`` and the frames segment ``i`` owns (13 frames for the first segment, 12
        for the others). Frame span: one latent frame, the first frame of a segment with that segment's text in
        front of it (text is read first and belongs to the frames it describes).

        The reversed order (:meth:`reverse`) has the SAME boundaries: it keeps the text slots in place and flips the
        video frame by frame into the same slots, so its segment span ``i`` is text ``S-1-i`` with the frames of window
        ``S-1-i`` that the reversed pass reaches first (the shared frame goes with the segment read first, the mirror
        of the forward ownership) and its frame spans are whole frames.
        """
        L, N = self.text_len, self.tokens_per_frame
        frames, segments, pos = [0], [0], 0
        for i in range(self.num_segments):
            f0, f1 = self.owned_frames(i)
            for j in range(f1 - f0):
                pos += N + (L if j == 0 else 0)
                frames.append(pos)
            segments.append(pos)
        return TokenSpans(tuple(frames), tuple(segments))

    # ------------------------------------------------------------------------------------ order changes
    def _check_len(self, x: torch.Tensor, dim: int, what: str) -> int:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"VideoLayout.{what}: expected a torch.Tensor, got {type(x).__name__}")
        dim = dim % x.dim()
        if x.shape[dim] != self.total_tokens:
            raise ValueError(
                f"VideoLayout.{what}: dim {dim} of {tuple(x.shape)} has {x.shape[dim]} tokens; the layout has "
                f"{self.total_tokens} (= {self.num_segments} x {self.text_len} text + {self.num_frames} frames x "
                f"{self.tokens_per_frame} video)"
            )
        return dim

    def interleave(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Storage order ``[text (S L) | video (F N)]`` -> interleaved ``[text_0, video_0, text_1, video_1, ...]``."""
        dim = self._check_len(x, dim, "interleave")
        return x.index_select(dim, self.index().interleave.to(x.device))

    def deinterleave(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Exact inverse of :meth:`interleave`."""
        dim = self._check_len(x, dim, "deinterleave")
        return x.index_select(dim, self.index().deinterleave.to(x.device))

    def reverse(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """In interleaved order: flip the video tokens token by token, reverse the order of the text chunks (tokens
        inside a chunk keep their order); text slots stay in place. An involution: ``reverse(reverse(x)) == x``."""
        dim = self._check_len(x, dim, "reverse")
        return x.index_select(dim, self.index().reverse.to(x.device))

    # -------------------------------------------------------------------------------------------- text
    def pack_text(self, prompts: Sequence[torch.Tensor], pad_value: float = 0.0) -> torch.Tensor:
        """Pack one text embedding per segment (``[L_i, D]`` or ``[B, L_i, D]``) into ``[B, S L, D]``.

        Each prompt is right-padded to its slot of ``L`` tokens with ``pad_value``; a prompt longer than its slot
        raises (truncation would silently drop words). CogVideoX pads with the T5 encoding of pad tokens; to match
        that, encode padded prompts and pass them with ``L_i == L``.
        """
        if len(prompts) != self.num_segments:
            raise ValueError(
                f"pack_text: got {len(prompts)} prompts for {self.num_segments} segments (one per segment)"
            )
        out = []
        for i, p in enumerate(prompts):
            if not isinstance(p, torch.Tensor) or p.dim() not in (2, 3):
                raise ValueError(f"pack_text: prompt {i} must be a tensor [L_i, D] or [B, L_i, D]")
            p = p if p.dim() == 3 else p[None]
            if p.shape[1] > self.text_len:
                raise ValueError(
                    f"pack_text: prompt of segment {i} has {p.shape[1]} tokens, longer than its slot of "
                    f"text_len={self.text_len}"
                )
            pad = p.new_full((p.shape[0], self.text_len - p.shape[1], p.shape[2]), pad_value)
            out.append(torch.cat([p, pad], dim=1))
        shapes = {(t.shape[0], t.shape[2]) for t in out}
        if len(shapes) > 1:
            raise ValueError(f"pack_text: prompts disagree in batch size / width: {sorted(shapes)}")
        return torch.cat(out, dim=1)

    def describe(self) -> str:
        """One line with the sizes, e.g. for logs."""
        gh, gw = self.grid
        return (
            f"{self.num_segments} segment(s) / {self.num_scenes} scene(s), {self.num_frames} latent frames "
            f"({self.window_frames}-frame windows sharing {self.overlap_frames}), {gh}x{gw}={self.tokens_per_frame} "
            f"tokens/frame: {self.video_tokens} video + {self.text_tokens} text = {self.total_tokens} tokens"
        )


class LayoutIndex(NamedTuple):
    """Index tensors of a :class:`VideoLayout` (CPU int64 unless noted; T = S L + F N).

    ``frame_windows [S, W]``; ``frame_counts [F]`` (float); ``interleave [T]`` (``x_int = x_sto[interleave]``);
    ``deinterleave [T]`` (its inverse); ``reverse [T]`` (interleaved -> reversed interleaved, an involution);
    ``global_positions [T, 3]`` (interleaved order); ``window_positions [L + W N, 3]``; ``is_text [T]`` (bool,
    interleaved order).
    """

    frame_windows: torch.Tensor
    frame_counts: torch.Tensor
    interleave: torch.Tensor
    deinterleave: torch.Tensor
    reverse: torch.Tensor
    global_positions: torch.Tensor
    window_positions: torch.Tensor
    is_text: torch.Tensor


def _video_positions(frames: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """``[len(frames) gh gw, 3]`` positions (t, y, x), frame-major, row-major inside a frame."""
    t, y, x = torch.meshgrid(frames, torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.stack([t, y, x], dim=-1).reshape(-1, 3)


@functools.lru_cache(maxsize=64)
def _layout_index(lay: VideoLayout) -> LayoutIndex:
    S, L, N, F, W = lay.num_segments, lay.text_len, lay.tokens_per_frame, lay.num_frames, lay.window_frames
    gh, gw = lay.grid
    n_text = S * L
    frame_windows = torch.stack([torch.arange(*lay.window(i)) for i in range(S)])  # [S, W]
    frame_counts = torch.bincount(frame_windows.flatten(), minlength=F).to(torch.float32)

    # Storage -> interleaved: segment i contributes its text slot, then the tokens of the frames it owns.
    parts = []
    for i in range(S):
        parts.append(torch.arange(i * L, (i + 1) * L))
        f0, f1 = lay.owned_frames(i)
        parts.append(n_text + torch.arange(f0 * N, f1 * N))
    interleave = torch.cat(parts)
    deinterleave = torch.empty_like(interleave)
    deinterleave[interleave] = torch.arange(interleave.numel())

    # Reversal R in storage order (text chunks in reverse order, video flipped), carried to interleaved order:
    # reverse = deinterleave[R[interleave]] so that x_int[reverse] == interleave(R(deinterleave(x_int))).
    text_rev = torch.arange(n_text).view(S, L).flip(0).flatten()
    video_rev = n_text + torch.arange(F * N).flip(0)
    rev_storage = torch.cat([text_rev, video_rev])
    reverse = deinterleave[rev_storage[interleave]]

    storage_pos = torch.cat([torch.full((n_text, 3), -1, dtype=torch.long), _video_positions(torch.arange(F), gh, gw)])
    global_positions = storage_pos[interleave]
    window_positions = torch.cat(
        [torch.full((L, 3), -1, dtype=torch.long), _video_positions(torch.arange(W), gh, gw)]
    )
    is_text = (torch.arange(lay.total_tokens) < n_text)[interleave]
    return LayoutIndex(
        frame_windows, frame_counts, interleave, deinterleave, reverse, global_positions, window_positions, is_text
    )
