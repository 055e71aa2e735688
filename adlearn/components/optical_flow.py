"""Dense optical flow between two frames: how far every pixel moved
(reference: ``anomalib.models.video.ai_vad.flow.FlowExtractor``).

AI-VAD (Reiss & Hoshen, AAAI 2023, Sec. 3.2 "Velocity") describes how fast each object moves by the
optical flow inside its box. The flow ``F`` between a first frame ``I₀`` and a last frame ``I₁`` gives
every pixel ``p`` of ``I₀`` a displacement ``F(p) = (dx, dy)`` in pixels such that ``I₁(p + F(p)) ≈ I₀(p)``.

Three ways to compute it (``method=``):

* ``"farneback"`` (the offline default) — G. Farnebäck, "Two-Frame Motion Estimation Based on
  Polynomial Expansion", SCIA 2003: around every pixel each frame is approximated by a quadratic
  polynomial ``xᵀAx + bᵀx + c``; a shift ``d`` of a quadratic changes its linear term by ``−2Ad``, so
  ``d = −½ A⁻¹ Δb``, solved over a Gaussian window and refined coarse-to-fine on an image pyramid.
  OpenCV's ``calcOpticalFlowFarneback``.
* ``"dis"`` — Dense Inverse Search (Kroeger et al., ECCV 2016): fast patch matching plus
  variational refinement. OpenCV's ``DISOpticalFlow``.
* ``"raft"`` — the reference's choice: torchvision's RAFT-large (Teed & Deng, ECCV 2020) with its
  pretrained weights (downloaded once; offline it raises a clear error naming the offline methods).
  As in the reference, the frames are resized to 520×960 and the flow resized back without rescaling
  its values (a deliberate difference: we *do* rescale them, so that all three methods measure pixels of
  the input frame).

Shapes: frames ``(N, 3, H, W)`` floats in [0, 1]; flow ``(N, 2, H, W)``, channel 0 = dx (to the right),
channel 1 = dy (down).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FLOW_METHODS", "OpticalFlow", "dense_optical_flow"]

FLOW_METHODS = ("farneback", "dis", "raft")


def _to_gray_uint8(frames: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] → (N, H, W) uint8 luminance (ITU-R 601 weights, as OpenCV's BGR2GRAY)."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=frames.dtype, device=frames.device)
    gray = (frames * weights[None, :, None, None]).sum(dim=1)  # (N, H, W)
    return (gray.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _check_frames(first: torch.Tensor, last: torch.Tensor) -> None:
    for name, frames in (("first", first), ("last", last)):
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
            shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"optical flow expects {name} frames of shape (N, 3, H, W) in [0, 1]; got {shape}")
    if first.shape != last.shape:
        raise ValueError(f"first and last frames differ in shape: {tuple(first.shape)} vs {tuple(last.shape)}")


class OpticalFlow:
    """Dense flow ``(N, 2, H, W)`` from ``first`` to ``last`` frames ``(N, 3, H, W)`` in [0, 1].

    Args:
        method: ``"farneback"`` (default), ``"dis"`` or ``"raft"``.
        raft_size: (H, W) the frames are resized to for RAFT (the reference's 520×960).
        device: where RAFT runs (the OpenCV methods run on the CPU).
    """

    def __init__(self, method: str = "farneback", raft_size: tuple[int, int] = (520, 960), device="cpu") -> None:
        if method not in FLOW_METHODS:
            raise ValueError(f"unknown optical flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")
        self.method = method
        self.raft_size = tuple(raft_size)
        self.device = torch.device(device)
        self._raft = None
        self._dis = None

    def __call__(self, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        _check_frames(first, last)
        if self.method == "raft":
            return self._raft_flow(first, last).to(first.device)
        return self._opencv_flow(first, last).to(first.device)

    # ----------------------------------------------------------------- OpenCV (offline)
    def _opencv_flow(self, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        import cv2

        gray_first, gray_last = _to_gray_uint8(first), _to_gray_uint8(last)  # (N, H, W) uint8
        flows = []
        for a, b in zip(gray_first, gray_last):
            if self.method == "farneback":
                # pyramid scale 0.5, 3 levels, 15 px window, 3 iterations, 5-px polynomial, σ 1.2
                flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            else:
                if self._dis is None:
                    self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
                flow = self._dis.calc(a, b, None)
            flows.append(torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1))  # (2, H, W)
        return torch.stack(flows).float()  # (N, 2, H, W)

    # ----------------------------------------------------------------- RAFT (pretrained, downloaded)
    def _load_raft(self):
        from torchvision.models.optical_flow import Raft_Large_Weights, raft_large

        try:
            model = raft_large(weights=Raft_Large_Weights.DEFAULT, progress=False)
        except Exception as error:  # no network, no cached file
            raise RuntimeError(
                "optical flow 'raft' needs torchvision's pretrained RAFT-large weights, which could not be "
                f"loaded ({type(error).__name__}: {error}). Offline, use flow_method='farneback' or 'dis'"
            ) from error
        return model.eval().to(self.device)

    @torch.no_grad()
    def _raft_flow(self, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        if self._raft is None:
            self._raft = self._load_raft()
        height, width = first.shape[-2:]

        def prepare(frames):  # RAFT's transform: resize, then [0, 1] → [−1, 1]
            resized = F.interpolate(frames.to(self.device), size=self.raft_size, mode="bilinear", align_corners=False)
            return resized * 2 - 1

        flow = self._raft(prepare(first), prepare(last))[-1]  # the last refinement (N, 2, h, w)
        flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
        scale = torch.tensor([width / self.raft_size[1], height / self.raft_size[0]], device=flow.device)
        return (flow * scale[None, :, None, None]).cpu()  # displacements in input-frame pixels


def dense_optical_flow(first: torch.Tensor, last: torch.Tensor, method: str = "farneback") -> torch.Tensor:
    """One-call form of `OpticalFlow`: ``(N, 2, H, W)`` flow, channel 0 = dx, channel 1 = dy (pixels)."""
    return OpticalFlow(method)(first, last)
