"""WinCLIP — Zero-/Few-Shot Anomaly Classification and Segmentation (Jeong, Zou, Kim, Zhang, Ravichandran,
Dabeer; CVPR 2023, arXiv:2303.14814). Reference implementation: ``anomalib.models.image.winclip``
(``torch_model``: ``WinClipModel``; ``prompting``; ``utils``).

Idea: CLIP already knows what "a photo of a damaged bottle" looks like. Ask it, for the whole image and
for every small window of it, whether the picture is closer to sentences about a flawless object or to
sentences about a damaged one (zero-shot: no training image at all). Given k normal images
(WinCLIP+, few-shot), also remember their patches and windows and score how far each query patch or
window is from its nearest remembered one.

The steps, in the paper's order:

1. **Compositional prompt ensemble** (Sec. 4.1, Fig. 3): 7 normal and 4 anomalous state phrases × 21
   templates, encoded by CLIP's text tower and averaged per family → text embeddings ``[normal,
   anomalous]`` (`adlearn.components.clip_prompts`).
2. **Window embeddings** (Sec. 4.2): the image's tokens (class token + 15 × 15 patch tokens at 240 px)
   are cut into every 2 × 2 and 3 × 3 window (196 and 169 of them); each window's class token + patch
   tokens go through the transformer again, giving one CLIP embedding per window
   (`adlearn.components.windows`). The whole image gives the image embedding and the patch tokens.
3. **Zero-shot class score** (Eq. 1): softmax(cos(x, text) / 0.07)[anomalous] for the image and every
   window.
4. **Zero-shot map** (Eq. 3): per scale, each patch's harmonic mean of the window scores covering it;
   then the harmonic mean over the scales and the image score (broadcast to the grid).
5. **Few-shot** (WinCLIP+, Sec. 4.3, Eq. 4): memory of the k reference images' patch embeddings and
   window embeddings per scale; a query's score is min over the memory of (1 − cos) / 2; windows go
   back to patches by the harmonic mean; the patch level and the scales are averaged.
6. **Combine** (the reference's rule): map = (zero-shot map + few-shot map) / 2; image score =
   (zero-shot image score + max of the few-shot map) / 2 (`winclip_anomaly_map`, `winclip_image_score`).
7. Upsample the 15 × 15 map bilinearly to the image size.

Defaults (the reference's): open_clip ``ViT-B-16-plus-240`` with the ``laion400m_e31`` weights, 240 px,
scales (2, 3), ``k_shot=0`` (zero-shot), class name "object" (the category's name is better: the CLI and
benchmark pass none, so set ``class_name="bottle"``).

Differences from the reference, and why:

* **The encoder is pluggable.** ``backbone`` is an open_clip architecture (a name, or a config dict for
  a small random tower in tests) or a timm CNN with packaged offline weights (``efficientnet_lite0``,
  the ``cpu`` preset). A CNN has no text tower, so it runs the few-shot branch alone: its patch
  embeddings are PatchCore's locally aware ``layer2 + layer3`` features and its window embeddings the
  mean of each window's k × k patch features (`pool_windows`; a CNN has no class token to attend with).
* Images arrive ImageNet-normalised like every model's (``model.transform``); the CLIP path converts them
  to CLIP's normalisation inside. The resize is the house transform's (bilinear, antialiased), not
  CLIP's bicubic one.
* ``fit`` takes the training set and chooses the k reference images itself, at random with the model's
  ``seed`` (``reference_indices`` says which); the reference takes the first k of its data loader.
* ``state_dict`` leaves the frozen encoder out, as the reference does; ``load`` rebuilds it from the
  same weights (a random tower from the same seed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from adlearn.components.clip_prompts import TEMPERATURE, class_scores, text_embeddings
from adlearn.components.windows import (
    harmonic_aggregation,
    harmonic_mean,
    pool_windows,
    window_masks,
    window_tokens,
)
from adlearn.models.base import MemoryBankModel, Prediction
from adlearn.models.common import concat_upsampled, upsample_map

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation CLIP was trained with
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_TAGS = {"ViT-B-16-plus-240": "laion400m_e31"}  # the reference's weights for its backbone
OFFLINE_ENCODER = "efficientnet_lite0"


# --------------------------------------------------------------------------- the CLIP tower
def _clip_config(backbone: str | dict) -> dict | None:
    """The open_clip config of ``backbone`` (a dict is one already), or None for a timm CNN."""
    if isinstance(backbone, dict):
        return backbone
    import open_clip

    return open_clip.get_model_config(backbone)


def _clip_weights_error(backbone: str, tag: str, reason: str):
    from adlearn.components.feature_extractors.backbones import PretrainedWeightsError

    return PretrainedWeightsError(
        f"the CLIP weights {backbone!r} / {tag!r} are unavailable ({reason}). The zero-shot numbers need them: "
        f"online, they download once (open_clip caches them). Offline, run WinCLIP's few-shot branch on the "
        f"offline encoder: preset='cpu' (or backbone={OFFLINE_ENCODER!r}, k_shot=4); --preset cpu on the "
        "command line. weights='none' builds a random tower (for testing the pipeline only); "
        "weights='/path/to/open_clip_weights.pt' loads a file you downloaded elsewhere."
    )


def build_clip(backbone: str | dict, weights: str) -> nn.Module:
    """An open_clip ``CLIP`` model, frozen: random (``weights="none"``), a weights file, or a pretrained tag
    (``"auto"`` = the reference's tag for its backbone). Offline without cached weights: a clear error."""
    import open_clip

    config = _clip_config(backbone)
    if weights == "none" or (weights == "auto" and isinstance(backbone, dict)):
        model = open_clip.CLIP(**config)
    elif Path(weights).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        if not Path(weights).is_file():
            raise _clip_weights_error(str(backbone), weights, "no such file")
        model = open_clip.CLIP(**config)
        open_clip.load_checkpoint(model, weights)
    else:
        from adlearn.components.feature_extractors.backbones import _local_cache_only, hub_reachable

        tag = DEFAULT_TAGS.get(backbone) if weights == "auto" else weights
        if tag is None:
            raise ValueError(f"no default weights for {backbone!r}: give weights='<open_clip tag>' or 'none'")
        online = hub_reachable()
        quiet = logging.getLogger().disabled
        logging.getLogger().disabled = True  # open_clip logs its failed download before raising: we explain it
        try:
            if online:
                model = open_clip.create_model(backbone, pretrained=tag)
            else:
                with _local_cache_only():  # cached weights or nothing, no minute of retries
                    model = open_clip.create_model(backbone, pretrained=tag)
        except Exception as error:  # no network, no cache, unknown tag: all end the same way for the user
            reason = "no connection to the Hugging Face hub and no cached copy" if not online else type(error).__name__
            raise _clip_weights_error(backbone, tag, reason) from None
        finally:
            logging.getLogger().disabled = quiet
    return model.eval().requires_grad_(False)


def clip_tokens(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The tokens a ViT feeds its transformer: class token + patch tokens, with positions.
    images (B, 3, H, W), CLIP-normalised -> (B, 1 + P, width)."""
    patches = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, P, width), row-major patches
    cls = visual.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)  # (B, 1, width)
    return torch.cat([cls, patches], dim=1) + visual.positional_embedding.to(patches.dtype)


def clip_finish(visual: nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rest of CLIP's image tower on any token sequence (class token first): ln_pre → transformer →
    ln_post → the class token, projected. (N, L, width) -> (N, D) pooled, (N, L − 1, width) tokens."""
    x = visual.ln_post(visual.transformer(visual.ln_pre(tokens)))  # (N, L, width)
    return x[:, 0] @ visual.proj, x[:, 1:]


def visual_association_score(embeddings: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """Eq. 4: min over the memory of (1 − cos) / 2, in [0, 1]. (B, N, D), (M, D) -> (B, N).

    Clamped at 0: a query equal to a memory entry can round to cos = 1 + ε, and a negative score would
    break the harmonic mean that follows (its reciprocals must all be ≥ 0)."""
    memory = nn.functional.normalize(memory, dim=-1)
    scores = [(1 - nn.functional.normalize(e, dim=-1) @ memory.T).amin(dim=-1) / 2 for e in embeddings]
    return torch.stack(scores).clamp(min=0.0)  # one image at a time: a (N, M) matrix, never (B·N, M)


def winclip_anomaly_map(zero_shot: torch.Tensor | None, few_shot: torch.Tensor | None) -> torch.Tensor:
    """Step 6: the mean of the zero-shot and few-shot maps (B, h, w) — whichever the model has."""
    parts = [part for part in (zero_shot, few_shot) if part is not None]
    return torch.stack(parts).mean(dim=0)


def winclip_image_score(zero_shot: torch.Tensor | None, few_shot_map: torch.Tensor | None) -> torch.Tensor:
    """Step 6: the mean of the zero-shot image score (B,) and the few-shot map's maximum (B,)."""
    parts = [zero_shot] if zero_shot is not None else []
    if few_shot_map is not None:
        parts.append(few_shot_map.amax(dim=(-2, -1)))
    return torch.stack(parts).mean(dim=0)


class Winclip(MemoryBankModel):
    name = "winclip"
    learning_type = "zero_shot"  # "few_shot" once k_shot > 0 (set per model)
    presets = {"cpu": {"backbone": OFFLINE_ENCODER, "k_shot": 4}}

    def __init__(
        self,
        class_name: str = "object",
        k_shot: int = 0,
        scales: tuple[int, ...] = (2, 3),
        backbone: str | dict = "ViT-B-16-plus-240",
        weights: str = "auto",
        layers: tuple[str, ...] = ("layer2", "layer3"),
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 8,
    ):
        if int(k_shot) < 0:
            raise ValueError(f"k_shot={k_shot} must be >= 0 (0 = zero-shot, k = k reference images)")
        scales = tuple(int(scale) for scale in scales)
        config = _clip_config(backbone)
        if config is None and int(k_shot) == 0:
            raise ValueError(
                f"backbone {backbone!r} is a CNN without a text tower, so it cannot score zero-shot: give "
                "k_shot >= 1 (the few-shot branch on the offline encoder, preset='cpu'), or a CLIP backbone"
            )
        tower_size = config["vision_cfg"]["image_size"] if config else 240
        if image_size is not None and config and image_size != tower_size:
            raise ValueError(f"the CLIP tower {backbone!r} takes {tower_size}px images: use image_size={tower_size}")
        super().__init__(image_size=image_size or tower_size, device=device, seed=seed, batch_size=batch_size)
        self.save_hyperparameters()
        self.class_name, self.k_shot, self.scales = class_name, int(k_shot), scales
        self.learning_type = "few_shot" if self.k_shot else "zero_shot"
        self.is_clip = config is not None
        if self.is_clip:
            self.clip = build_clip(backbone, weights)
            self.clip.visual.output_tokens = False
            grid = tuple(self.clip.visual.grid_size)
        else:
            from adlearn.components import TimmFeatureExtractor

            self.encoder = TimmFeatureExtractor(backbone, list(layers), pre_trained=weights)
            self.feature_pooler = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)
            grid = (self.input_size[0] // self.encoder.strides[0], self.input_size[1] // self.encoder.strides[0])
        self.grid_size = grid  # (h, w) patches
        for scale in scales:  # window positions: geometry, rebuilt with the model, not saved
            self.register_buffer(f"masks_{scale}", window_masks(grid, scale), persistent=False)
        # Fitted: the text embeddings [normal, anomalous] and the reference images' memory
        self.register_buffer("text_embeddings", torch.empty(0))
        self.register_buffer("patch_memory", torch.empty(0))
        for scale in scales:
            self.register_buffer(f"window_memory_{scale}", torch.empty(0))
        self.register_buffer("reference_indices", torch.empty(0, dtype=torch.long))

    @property
    def masks(self) -> list[torch.Tensor]:
        """The window masks per scale, (n_windows, k²) patch numbers (`window_masks`)."""
        return [getattr(self, f"masks_{scale}") for scale in self.scales]

    # ------------------------------------------------------------------ persistence: no frozen tower
    _TOWERS = ("clip.", "encoder.")

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        full = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in [key for key in full if key[len(prefix) :].startswith(self._TOWERS)]:
            del full[key]
        return full

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        tower = {key: value for key, value in super().state_dict().items() if key.startswith(self._TOWERS)}
        return super().load_state_dict({**tower, **state_dict}, strict=strict, assign=assign)

    # ------------------------------------------------------------------ step 2: embeddings
    def to_clip_normalisation(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised images (the house transform) -> CLIP-normalised."""

        def column(values):
            return images.new_tensor(values).view(1, 3, 1, 1)

        pixels = images * column(IMAGENET_STD) + column(IMAGENET_MEAN)  # back to [0, 1]
        return (pixels - column(CLIP_MEAN)) / column(CLIP_STD)

    def extract_features(self, images: torch.Tensor):
        """images (B, 3, H, W) -> (image embedding (B, D) or None for a CNN, [window embeddings
        (B, n_windows, D) per scale], patch embeddings (B, P, C))."""
        if not self.is_clip:
            features = self.encoder(images)  # {layer: (B, C_l, h_l, w_l)}
            embedding = concat_upsampled([self.feature_pooler(f) for f in features.values()], mode="bilinear")
            patches = embedding.flatten(2).transpose(1, 2)  # (B, P, C), row-major
            return None, [pool_windows(patches, masks) for masks in self.masks], patches
        visual = self.clip.visual
        tokens = clip_tokens(visual, self.to_clip_normalisation(images))  # (B, 1 + P, width)
        image_embedding, patch_embeddings = clip_finish(visual, tokens)  # (B, D), (B, P, width)
        windows = []
        for masks in self.masks:
            pooled, _ = clip_finish(visual, window_tokens(tokens, masks))  # (B·n_windows, D)
            windows.append(pooled.reshape(images.shape[0], masks.shape[0], -1))  # (B, n_windows, D)
        return image_embedding, windows, patch_embeddings

    # ------------------------------------------------------------------ fit: text and k reference images
    def reference_indices_for(self, n_images: int) -> torch.Tensor:
        """Which k of ``n_images`` training images are the references: a random choice set by ``seed``."""
        if self.k_shot > n_images:
            raise ValueError(
                f"k_shot={self.k_shot} but the training set has {n_images} images: use k_shot <= {n_images} "
                "(or more training images)"
            )
        generator = torch.Generator().manual_seed(int(self.seed))
        return torch.randperm(n_images, generator=generator)[: self.k_shot].sort().values

    def reference_images(self, data) -> torch.Tensor:
        """The k reference images (k, 3, H, W) from a tensor, a Dataset of dict items or a DataLoader."""
        if isinstance(data, torch.Tensor) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            indices = self.reference_indices_for(len(data))
            items = [data[int(i)] for i in indices]
            images = [item["image"] if isinstance(item, dict) else item for item in items]
            images = torch.stack(images) if images else torch.empty(0, 3, *self.input_size)
        else:  # a DataLoader: read it once
            everything = torch.cat(list(self.batches(data)))
            indices = self.reference_indices_for(len(everything))
            images = everything[indices]
        self.check_images(images)
        self.reference_indices = indices.to(self.device)
        return images.to(self.device)

    def collect(self, images: torch.Tensor) -> torch.Tensor:
        """One row per reference image: its patch embeddings, then its window embeddings per scale,
        flattened (B, P·C + Σ n_windows·D); `fit_bank` cuts the rows back into the memories."""
        _, windows, patches = self.extract_features(images)
        return torch.cat([patches.flatten(1)] + [w.flatten(1) for w in windows], dim=1)

    def fit_bank(self, rows: torch.Tensor) -> None:  # (k, P·C + Σ n_windows·D)
        sizes = [self.grid_size[0] * self.grid_size[1]] + [masks.shape[0] for masks in self.masks]
        widths = [self.patch_width] + [self.embedding_width] * len(self.scales)
        pieces = rows.split([n * d for n, d in zip(sizes, widths, strict=True)], dim=1)
        self.patch_memory = pieces[0].reshape(-1, widths[0]).contiguous()  # (k·P, C)
        for scale, piece in zip(self.scales, pieces[1:], strict=True):
            setattr(self, f"window_memory_{scale}", piece.reshape(-1, widths[1]).contiguous())  # (k·n, D)

    @property
    def patch_width(self) -> int:
        return self.clip.visual.transformer.width if self.is_clip else sum(self.encoder.out_dims)

    @property
    def embedding_width(self) -> int:
        return self.clip.visual.proj.shape[1] if self.is_clip else sum(self.encoder.out_dims)

    @torch.no_grad()
    def fit(self, data=None) -> Winclip:
        self.to_device().eval()
        if self.is_clip:  # step 1: the prompt ensemble's two text embeddings
            import open_clip

            self.text_embeddings = text_embeddings(
                self.clip.encode_text, open_clip.tokenize, self.class_name, device=self.device
            )
        if self.k_shot:  # step 5: the reference images' memory
            if data is None:
                raise ValueError(f"k_shot={self.k_shot}: fit(train_data) needs the training images to choose from")
            references = self.reference_images(data)
            self.fit_bank(torch.cat([self.collect(batch) for batch in references.split(self.batch_size)]))
        self.mark_fitted()
        return self

    # ------------------------------------------------------------------ steps 3-7: scores and map
    def zero_shot_scores(self, image_embedding: torch.Tensor, windows: list[torch.Tensor]):
        """Steps 3–4: image scores (B,) and the zero-shot map (B, h, w)."""
        image_scores = class_scores(image_embedding, self.text_embeddings, TEMPERATURE)  # (B,)
        per_scale = [image_scores[:, None, None].expand(-1, *self.grid_size)]  # the image, broadcast
        for window_embeddings, masks in zip(windows, self.masks, strict=True):
            scores = class_scores(window_embeddings, self.text_embeddings, TEMPERATURE)  # (B, n_windows)
            per_scale.append(harmonic_aggregation(scores, masks, self.grid_size))  # (B, h, w)
        return image_scores, harmonic_mean(per_scale)

    def few_shot_scores(self, windows: list[torch.Tensor], patches: torch.Tensor) -> torch.Tensor:
        """Step 5: the few-shot map (B, h, w): patch level and each scale, averaged."""
        batch = patches.shape[0]
        levels = [visual_association_score(patches, self.patch_memory).reshape(batch, *self.grid_size)]
        for scale, window_embeddings, masks in zip(self.scales, windows, self.masks, strict=True):
            scores = visual_association_score(window_embeddings, getattr(self, f"window_memory_{scale}"))
            levels.append(harmonic_aggregation(scores, masks, self.grid_size))
        return torch.stack(levels).mean(dim=0)

    def anomaly_map(self, score_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Step 7: the (B, h, w) patch map bilinearly upsampled to (B, H, W)."""
        return upsample_map(score_map.unsqueeze(1), size, mode="bilinear").squeeze(1)

    def predict_step(self, images: torch.Tensor) -> Prediction:
        image_embedding, windows, patches = self.extract_features(images)
        zero_score, zero_map = self.zero_shot_scores(image_embedding, windows) if self.is_clip else (None, None)
        few_map = self.few_shot_scores(windows, patches) if self.k_shot else None
        return Prediction(
            pred_score=winclip_image_score(zero_score, few_map),
            anomaly_map=self.anomaly_map(winclip_anomaly_map(zero_map, few_map), images.shape[-2:]),
        )
