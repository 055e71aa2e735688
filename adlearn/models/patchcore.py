"""PatchCore — Towards Total Recall in Industrial Anomaly Detection (Roth et al., CVPR 2022, arXiv:2106.08265).
Reference implementation: ``anomalib.models.image.patchcore`` (``torch_model``, ``anomaly_map``) with
``anomalib.models.components.sampling.KCenterGreedy``.

Idea: an image is anomalous as soon as *one* of its patches is. Describe every patch of every
normal training image with a mid-level CNN feature, keep them all in a **memory bank** ℳ, and score
a test patch by its distance to the nearest bank entry:

    s(p) = min_{m ∈ ℳ} ‖p − m‖₂                                   (patch score, Sec. 3.3, Eq. 6)

The bank of a whole training set is huge (bottle: 209 images × 28·28 patches ≈ 164k rows), so it is
**coreset-subsampled** with greedy k-center selection: keep the points that best cover the rest,
10 % of them by default. The image score is the largest patch score s* = s(p*), re-weighted by how
"lonely" its nearest bank entry m* is:

    w  = 1 − exp(‖p* − m*‖) / Σ_{m ∈ 𝒩_b(m*)} exp(‖p* − m‖)  =  1 − softmax(d)[0]
    s  = w · s*                                                     (Sec. 3.3, Eq. 7)

where 𝒩_b(m*) are the b = ``num_neighbors`` nearest bank entries of m* (m* itself first) and d the
distances from p* to them. m* is the closest of them to p*, so the softmax puts the least weight on it
and w lies between 1 − 1/b and 1. If m* sits in a dense region of the bank (its neighbours are about
as close to p* as m* is), the softmax is flat and w ≈ 1 − 1/b. If m* is an isolated, rare normal
pattern (its neighbours are much farther from p*), w → 1: the paper raises the score of a patch whose
best match is itself an unusual nominal pattern. With ``num_neighbors == 1`` the score is just s*.

The steps, in the order of the paper:

1. Extract two mid-level feature maps (``layer2`` and ``layer3``) from a frozen ImageNet CNN.
2. Make them *locally aware* (Sec. 3.1, Eqs. 1–2): a 3×3 average pool (stride 1, padding 1) over
   each map, so every position also sees its neighbourhood.
3. Upsample ``layer3`` bilinearly to ``layer2``'s size and concatenate the channels; reshape the
   (B, E, h, w) embedding to rows (B·h·w, E). wide_resnet50_2 at 224²: 512 + 1024 = 1536 channels
   on a 28×28 grid; efficientnet_lite0: 40 + 112 = 152 channels.
4. Fit: all training rows → `KCenterGreedy` coreset (``coreset_sampling_ratio``; Sec. 3.2, Eq. 5 and
   Algorithm 1) → memory bank.
5. Predict: nearest bank entry of every test patch (`NearestNeighbors`) → patch scores (B, h, w).
6. Anomaly map: patch scores nearest-upsampled to the image size, Gaussian blur σ = 4.
7. Image score: the re-weighted maximum above.

Defaults (the reference's): backbone ``wide_resnet50_2``, layers ``("layer2", "layer3")``,
``coreset_sampling_ratio=0.1``, ``num_neighbors=9``, blur σ = 4; the paper's transform, resize 256
and center crop 224, is ``preset="paper"`` (the crop scales with the resize: ``center_crop="auto"`` =
7/8 of ``image_size``, so ``image_size=64`` crops 56). On ``efficientnet_lite0`` (the offline backbone) ``layer2/layer3`` map
to ``blocks.2/blocks.4`` (same strides 8 and 16).

Differences from anomalib, and why:

* The default transform only resizes (as anomalib 2.7's pre-processor does), so the whole image is
  scored like every other model's; the paper's center crop (resize 256, crop 224, as anomalib v1)
  leaves the border out of the evaluation. ``preset="paper"`` (or ``center_crop="auto"``) restores it.
* The coreset comes from our `KCenterGreedy`: the same greedy rule, but its random start point is
  part of the coreset and the random projection is skipped when it would widen the features
  (lite0's 152 channels), and it prunes distance updates with the triangle inequality on CPU.
* Nearest neighbours come from `NearestNeighbors` (exact search, in chunks so a large batch never
  builds a (queries × bank) matrix that does not fit in memory) rather than one big distance matrix:
  faiss on a CPU, matrix products on a GPU. ``half_precision_search=True`` (GPU) ranks the bank in
  bfloat16 and re-ranks the best candidates with exact float32 distances, so the scores stay exact.
* ``coreset_sampling_ratio=1.0`` keeps every patch in training order (no greedy pass is needed to
  choose "all of them").
* Training features are collected in float32 rows per batch; nothing is promoted to float64.
"""

from __future__ import annotations

import torch
from torch import nn

from adlearn.components import GaussianBlur2d, KCenterGreedy, NearestNeighbors, TimmFeatureExtractor
from adlearn.models.base import MemoryBankModel, Prediction
from adlearn.models.common import concat_upsampled, resolve_center_crop, upsample_map


class Patchcore(MemoryBankModel):
    name = "patchcore"
    # The paper's transform center-crops (resize 256, crop 224). The default resizes only, as anomalib
    # 2.x: the whole image is scored, like every other model here (on the real bottle the maps rank the
    # central pixels the same either way, docs/benchmarks.md). The crop is one preset away.
    presets = {"paper": {"center_crop": "auto"}, "cpu": {"backbone": "efficientnet_lite0"}}

    def __init__(
        self,
        backbone: str = "wide_resnet50_2",
        layers: tuple[str, ...] = ("layer2", "layer3"),
        pretrained: str = "auto",
        coreset_sampling_ratio: float = 0.1,
        num_neighbors: int = 9,
        blur_sigma: float = 4.0,
        half_precision_search: bool = False,
        image_size: int = 256,
        center_crop: int | str | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
    ):
        if not 0 < coreset_sampling_ratio <= 1:
            raise ValueError(
                f"coreset_sampling_ratio={coreset_sampling_ratio} must be in (0, 1]: it is the "
                "share of training patches kept in the memory bank (0.1 = 10 %)"
            )
        if int(num_neighbors) < 1:
            raise ValueError(
                f"num_neighbors={num_neighbors} must be >= 1 (1 = the image score is the "
                "plain maximum patch score, 9 = the paper's re-weighting)"
            )
        super().__init__(
            image_size=image_size,
            center_crop=resolve_center_crop(image_size, center_crop),
            device=device,
            seed=seed,
            batch_size=batch_size,
        )
        self.save_hyperparameters()
        self.coreset_sampling_ratio = coreset_sampling_ratio
        self.num_neighbors = int(num_neighbors)
        self.half_precision_search = bool(half_precision_search)
        self.feature_extractor = TimmFeatureExtractor(backbone, list(layers), pre_trained=pretrained)
        self.feature_pooler = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)
        self.blur = GaussianBlur2d(sigma=blur_sigma, channels=1)
        # The memory bank (M, E): empty until fit; a dynamic buffer, so a checkpoint of any size loads.
        self.register_buffer("memory_bank", torch.empty(0))
        self._search: NearestNeighbors | None = None  # index over memory_bank, built on first use

    # Steps 1–3: locally aware patch features, one row per position.
    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        features = self.feature_extractor(images)  # {layer: (B, C_l, h_l, w_l)}
        pooled = [self.feature_pooler(f) for f in features.values()]  # same shapes, 3×3 neighbourhood
        return concat_upsampled(pooled, mode="bilinear")  # (B, E, h, w)

    @staticmethod
    def reshape_embedding(embedding: torch.Tensor) -> torch.Tensor:
        """(B, E, h, w) -> (B·h·w, E): one row per patch, image by image, row-major positions."""
        return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])

    def collect(self, images: torch.Tensor) -> torch.Tensor:
        return self.reshape_embedding(self.extract_features(images))  # (B·h·w, E) float32

    # Step 4: coreset-subsample all training patches into the memory bank.
    def fit_bank(self, patches: torch.Tensor) -> None:  # (N, E)
        coreset_size = int(patches.shape[0] * self.coreset_sampling_ratio)  # M = ⌊N·ratio⌋
        if coreset_size < 1:
            raise ValueError(
                f"the coreset is empty: {patches.shape[0]} training patches × "
                f"coreset_sampling_ratio={self.coreset_sampling_ratio} rounds down to 0; "
                "use more training images or a larger ratio"
            )
        if self.coreset_sampling_ratio >= 1:
            bank = patches  # every patch, in order
        else:
            sampler = KCenterGreedy(patches, sampling_ratio=self.coreset_sampling_ratio, random_state=self.seed)
            bank = sampler.sample_coreset()  # (M, E)
        self.memory_bank = bank.contiguous()
        self._search = None

    def nearest_neighbors(self) -> NearestNeighbors:
        """Exact Euclidean search over the memory bank (rebuilt after fit, load or a device move)."""
        if self._search is None or self._search.device != self.memory_bank.device:
            backend = "torch" if self.half_precision_search else "auto"
            self._search = NearestNeighbors(backend, half_precision=self.half_precision_search).fit(self.memory_bank)
        return self._search

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._search = None  # a loaded bank needs a fresh index

    # Step 5: distance of every test patch to its nearest bank entry.
    def patch_scores(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, _, height, width = embedding.shape  # (B, E, h, w)
        distances, locations = self.nearest_neighbors().search(self.reshape_embedding(embedding), k=1)
        return (
            distances[:, 0].reshape(batch, height, width),  # (B, h, w) patch scores
            locations[:, 0].reshape(batch, height, width),
        )  # (B, h, w) nearest bank index

    # Step 7: the paper's re-weighted maximum.
    def image_score(self, embedding: torch.Tensor, scores: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        batch = scores.shape[0]
        flat_scores = scores.reshape(batch, -1)  # (B, h·w)
        max_score, max_patch = flat_scores.max(dim=1)  # s*, index of p*  (B,)
        k = min(self.num_neighbors, self.memory_bank.shape[0])
        if k == 1:
            return max_score
        rows = torch.arange(batch, device=scores.device)
        patches = self.reshape_embedding(embedding).reshape(batch, flat_scores.shape[1], -1)
        test_patch = patches[rows, max_patch]  # p*  (B, E)
        nearest_entry = locations.reshape(batch, -1)[rows, max_patch]  # index of m*  (B,)
        # 𝒩_b(m*): the k nearest bank entries of m* (m* itself comes first, at distance 0).
        _, support = self.nearest_neighbors().search(self.memory_bank[nearest_entry], k=k)  # (B, k)
        support_distances = torch.linalg.vector_norm(
            self.memory_bank[support] - test_patch[:, None, :], dim=-1
        )  # ‖p* − m‖  (B, k)
        weight = 1 - torch.softmax(support_distances, dim=1)[:, 0]  # (B,)
        return weight * max_score

    # Step 6: the anomaly map.
    def anomaly_map(self, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        upsampled = upsample_map(scores.unsqueeze(1), size, mode="nearest")  # (B, 1, H, W)
        return self.blur(upsampled).squeeze(1)  # (B, H, W)

    def predict_step(self, images: torch.Tensor) -> Prediction:
        embedding = self.extract_features(images)  # (B, E, h, w)
        scores, locations = self.patch_scores(embedding)  # (B, h, w) twice
        return Prediction(
            pred_score=self.image_score(embedding, scores, locations),
            anomaly_map=self.anomaly_map(scores, images.shape[-2:]),
        )
