"""DSR's training anomalies, made in the quantised feature space (Zavrtanik, Kristan & Skočaj, ECCV 2022,
Sec. 3.4; reference: ``anomalib.models.image.dsr.anomaly_generator`` and the fake-anomaly generation of
``anomalib.models.image.dsr.torch_model``).

A Perlin mask M (`DsrAnomalyGenerator`) is max-pooled to each latent grid (`latent_mask`); inside it every
code is replaced by a random one among its near neighbours (`replacement_codes`, `swap_codes`); per image
one of three modes picks the levels that change (`quantized_anomalies`). The model that uses them is
`adlearn.models.dsr`; the VQ model they read is `adlearn.models.dsr_vq`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from adlearn.models.dsr_vq import GeneralAppearanceModel, snap


# ----------------------------------------------------------------------------- step 2: anomalies
class DsrAnomalyGenerator:
    """Perlin masks for about ``p_anomalous`` of the images, zeros for the others (the reference's
    ``DsrAnomalyGenerator``): `augment_batch(images) -> (B, 1, H, W)`."""

    def __init__(self, p_anomalous: float = 0.5, seed: int | None = 0):
        from adlearn.data import PerlinAnomalyGenerator

        self.perlin = PerlinAnomalyGenerator(None, p_anomalous=p_anomalous, seed=seed)
        self.p_anomalous = p_anomalous

    def reseed(self, seed: int) -> None:
        self.perlin.rng = np.random.default_rng(seed)

    def generate_anomaly(self, height: int, width: int) -> torch.Tensor:
        """One rotated, thresholded Perlin mask, (1, H, W) of 0/1."""
        return torch.from_numpy(self.perlin.generate_mask(height, width, ensure_nonempty=True))[None]

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = images.shape
        masks = torch.zeros(batch, 1, height, width)
        for i in range(batch):
            if self.perlin.rng.random() < self.p_anomalous:
                masks[i] = self.generate_anomaly(height, width)
        return masks.to(images.device)


def latent_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A position of the latent grid is anomalous if any pixel it covers is. (B, 1, H, W) -> (B, 1, h, w)"""
    return F.max_pool2d(mask, (mask.shape[-2] // size[0], mask.shape[-1] // size[1]))


def replacement_codes(
    z: torch.Tensor,
    codebook: torch.Tensor,
    strength: float,
    skip: float = 0.05,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """For each feature z (N, D): a random code among its ⌊strength·K⌋ + 1 nearest (at most K − 1),
    the nearest ⌊skip·K⌋ excluded. codebook (K, D) -> code indices (N,)"""
    count = codebook.shape[0]
    distances = z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1)[None] - 2 * z @ codebook.t()  # (N, K)
    nearest = max(1, min(int(strength * count) + 1, count - 1))
    candidates = distances.topk(nearest, dim=1, largest=False).indices[:, int(count * skip) :]  # (N, k')
    pick = torch.randint(candidates.shape[1], (len(z),), generator=generator).to(z.device)
    return candidates[torch.arange(len(z), device=z.device), pick]


def swap_codes(
    z: torch.Tensor,
    quantized: torch.Tensor,
    codebook: torch.Tensor,
    mask: torch.Tensor,
    strength: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Inside ``mask`` (B, 1, h, w) the quantised map (B, D, h, w) takes `replacement_codes` of z; outside
    it stays. ``strength`` (B,) per image."""
    flat = z.permute(0, 2, 3, 1).reshape(z.shape[0], -1, z.shape[1])  # (B, h·w, D)
    swapped = torch.stack(
        [codebook[replacement_codes(flat[b], codebook, float(strength[b]), generator=generator)] for b in range(len(z))]
    )  # (B, h·w, D)
    swapped = swapped.view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    return mask * swapped + (1 - mask) * quantized


def quantized_anomalies(
    vq: GeneralAppearanceModel,
    features: dict,
    mask: torch.Tensor,
    min_strength: float = 0.2,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Step 2 (the reference's ``generate_fake_anomalies_joined`` usage). ``features`` = ``vq.encode(I)``,
    ``mask`` (B, 1, H, W). Per image one mode: "both" (½; Q̃_lo, then Q̃_hi swapped in the codes that the
    anomalous Q̃_lo gives), "lo" (¼) or "hi" (¼; the other level keeps the normal codes).
    -> {"quantized_lo", "quantized_hi": Q̃ (B, D, h, w), "mask": the latent mask at image size (B, 1, H, W),
        "mode": (B,) 0 both, 1 lo, 2 hi}"""
    batch = mask.shape[0]
    codebook_lo, codebook_hi = vq.quantizer_lo.embedding, vq.quantizer_hi.embedding
    strength = torch.rand(2, batch, generator=generator) * (1 - min_strength) + min_strength  # (2, B)
    mode = torch.where(
        torch.rand(batch, generator=generator) < 0.5, 0, 1 + torch.randint(2, (batch,), generator=generator)
    )
    q_lo, q_hi = features["quantized_lo"], features["quantized_hi"]
    mask_lo, mask_hi = latent_mask(mask, q_lo.shape[-2:]), latent_mask(mask, q_hi.shape[-2:])
    swapped_lo = swap_codes(features["z_lo"], q_lo, codebook_lo, mask_lo, strength[0], generator)
    z_hi_after_lo = vq.hi_features(features["encoded_hi"], swapped_lo)  # the fine map of Q̃_lo
    q_hi_after_lo = snap(vq.quantizer_hi, z_hi_after_lo)
    both_hi = swap_codes(z_hi_after_lo, q_hi_after_lo, codebook_hi, mask_hi, strength[1], generator)
    only_hi = swap_codes(features["z_hi"], q_hi, codebook_hi, mask_hi, strength[1], generator)
    m = mode.to(mask.device).view(-1, 1, 1, 1)
    out_lo = torch.where(m == 2, q_lo, swapped_lo)
    out_hi = torch.where(m == 0, both_hi, torch.where(m == 1, q_hi, only_hi))
    size = mask.shape[-2:]
    truth = torch.where(m == 2, F.interpolate(mask_hi, size=size), F.interpolate(mask_lo, size=size))
    return {"quantized_lo": out_lo, "quantized_hi": out_hi, "mask": truth, "mode": mode}
