"""What a model returns: `Prediction`, a plain dataclass of tensors.

It lives at the bottom layer, apart from the models, so that code which only *reads* predictions —
`adlearn.evaluate`, the plotting helpers, and the deployment runtime `adlearn.deploy`, which runs an
exported file without any of adlearn's model code — needs nothing but torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Prediction:
    pred_score: torch.Tensor  # (B,)
    anomaly_map: torch.Tensor | None = None  # (B, H, W)
    pred_mask: torch.Tensor | None = None  # (B, H, W) bool: a segmentation the model decides itself (U-Flow's NFA)
    boxes: list[torch.Tensor] | None = None  # per image (N_b, 4) x1, y1, x2, y2 pixels: a detector's regions (R-KDE)
    box_scores: list[torch.Tensor] | None = None  # per image (N_b,): each region's score

    def cpu(self) -> Prediction:
        def moved(tensor):
            return None if tensor is None else tensor.detach().cpu()

        def moved_list(tensors):
            return None if tensors is None else [moved(tensor) for tensor in tensors]

        return Prediction(
            self.pred_score.detach().cpu(),
            moved(self.anomaly_map),
            moved(self.pred_mask),
            moved_list(self.boxes),
            moved_list(self.box_scores),
        )
