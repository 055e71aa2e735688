"""`TransformerFeatureExtractor`: a frozen timm vision transformer (DeiT, CaiT) as a feature map.

A vision transformer cuts the image into P×P patches (P = 16), embeds each as a token, adds a position
embedding and runs a stack of blocks. The patch tokens after block k, passed through the model's final
LayerNorm and laid back on their grid, form one feature map of stride P:

    tokens_0 = PatchEmbed(x) + pos_embed            (B, N, D),  N = (H/P)·(W/P)
    tokens_k = Block_k(tokens_{k−1})                 k = 1 … n_blocks
    map      = LayerNorm(tokens_k)[patch tokens] → (B, D, H/P, W/P)

    extractor = TransformerFeatureExtractor("deit_base_distilled_patch16_384")
    extractor(images)   # {"blocks.7": (B, 768, 24, 24)} for (B, 3, 384, 384) images

The output is the same kind of dict as `TimmFeatureExtractor`'s, ``{layer name: (B, C, h, w)}``, with
layer names ``"blocks.k"`` (0-based index of the block whose output is taken), so a model can use
either extractor.

Defaults follow FastFlow's transformer backbones (Yu et al., 2021, arXiv:2111.07677, Sec. 3, "Feature
Extractor": one intermediate block of CaiT / DeiT; reference: ``anomalib.models.image.fastflow.torch_model``):
``cait_m48_448`` after 41 of its 48 blocks (``"blocks.40"``), ``deit_base_distilled_patch16_384`` after
8 of its 12 blocks (``"blocks.7"``); another ``cait*`` / ``deit*`` model is cut at the same fraction of
its depth. DeiT prepends a class (and a distillation) token before the blocks — they are dropped from the
map; CaiT adds its class token only in the class-attention blocks after the stack, which are not run.

The code reads a few of timm's model attributes (``patch_embed``, ``pos_embed`` or ``_pos_embed``,
``blocks``, ``norm``); the construction checks they exist and names the missing one, and the tests
compare the result with timm's own ``forward_intermediates`` on random-weight models.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from adlearn.components.feature_extractors.backbones import load_backbone

# How many blocks to run for the models FastFlow names, and the fraction of the depth for their relatives.
TRANSFORMER_BLOCKS = {"cait_m48_448": 41, "deit_base_distilled_patch16_384": 8}
TRANSFORMER_DEPTH_FRACTION = {"cait": 41 / 48, "deit": 8 / 12}
_BLOCK_NAME = re.compile(r"^blocks\.(\d+)$")


def is_transformer(backbone: str) -> bool:
    """True for the vision-transformer families `TransformerFeatureExtractor` knows (CaiT, DeiT)."""
    return backbone.startswith(tuple(TRANSFORMER_DEPTH_FRACTION))


def default_transformer_layer(backbone: str, depth: int) -> str:
    """The block FastFlow takes for ``backbone`` with ``depth`` blocks: ``"blocks.k"`` (0-based)."""
    family = next(name for name in TRANSFORMER_DEPTH_FRACTION if backbone.startswith(name))
    n_blocks = TRANSFORMER_BLOCKS.get(backbone) or max(1, round(depth * TRANSFORMER_DEPTH_FRACTION[family]))
    return f"blocks.{min(n_blocks, depth) - 1}"


def _check_timm_layout(model: nn.Module, backbone: str) -> None:
    needed = ["patch_embed", "blocks", "norm", "embed_dim"]
    missing = [name for name in needed if not hasattr(model, name)]
    if not (hasattr(model, "_pos_embed") or hasattr(model, "pos_embed")):
        missing.append("pos_embed")
    if not missing and not all(hasattr(model.patch_embed, name) for name in ("img_size", "patch_size")):
        missing.append("patch_embed.img_size/patch_size")
    if missing:
        raise TypeError(
            f"{backbone!r} is not a timm vision transformer this extractor can read "
            f"(it lacks {', '.join(missing)}); use a cait* or deit* model, or a CNN with "
            f"TimmFeatureExtractor"
        )


class TransformerFeatureExtractor(nn.Module):
    """Frozen CaiT / DeiT: ``{"blocks.k": (B, D, H/P, W/P)}`` — normalised patch tokens after block k."""

    def __init__(self, backbone: str, layers: Sequence[str] | str | None = None, pre_trained="auto"):
        super().__init__()
        if not is_transformer(backbone):
            raise ValueError(
                f"TransformerFeatureExtractor reads CaiT or DeiT models (cait*, deit*), got "
                f"{backbone!r}; CNNs go through TimmFeatureExtractor"
            )
        self.backbone = backbone
        self.model = load_backbone(backbone, pre_trained)
        _check_timm_layout(self.model, backbone)
        self.model.eval().requires_grad_(False)
        depth = len(self.model.blocks)
        if layers is None:
            layers = [default_transformer_layer(backbone, depth)]
        elif isinstance(layers, str):
            layers = [layers]
        self.layers = list(layers)
        self.block_indices = []
        for layer in self.layers:
            match = _BLOCK_NAME.match(layer)
            if not match or int(match.group(1)) >= depth:
                raise ValueError(f"layer {layer!r} is not a block of {backbone}: use 'blocks.0' … 'blocks.{depth - 1}'")
            self.block_indices.append(int(match.group(1)))
        self.n_blocks = max(self.block_indices) + 1  # blocks that run
        self.image_size = tuple(self.model.patch_embed.img_size)  # what the position embedding fits
        self.patch = tuple(self.model.patch_embed.patch_size)
        self.out_dims = [self.model.embed_dim] * len(self.layers)
        self.strides = [self.patch[0]] * len(self.layers)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: dropout and friends stay off
        return self

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Patch + position embedding: ((B, n_prefix + N, D) tokens, n_prefix)."""
        model = self.model
        tokens = model.patch_embed(images)  # (B, N, D)
        if tokens.ndim == 4:  # (B, h, w, D) in timm's dynamic-size mode
            tokens = tokens.flatten(1, 2)
        if hasattr(model, "_pos_embed"):  # DeiT / ViT: class (+ distillation) tokens
            tokens = model._pos_embed(tokens)  # join here, with the position embedding
            tokens = getattr(model, "patch_drop", nn.Identity())(tokens)
            tokens = getattr(model, "norm_pre", nn.Identity())(tokens)
            return tokens, int(getattr(model, "num_prefix_tokens", 1))
        tokens = tokens + model.pos_embed  # CaiT: the class token joins only later
        return getattr(model, "pos_drop", nn.Identity())(tokens), 0

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:  # (B, 3, H, W)
        height, width = images.shape[-2] // self.patch[0], images.shape[-1] // self.patch[1]
        tokens, n_prefix = self.embed(images)
        outputs = {}
        for index, block in enumerate(self.model.blocks[: self.n_blocks]):
            tokens = block(tokens)
            if index in self.block_indices:
                patches = self.model.norm(tokens)[:, n_prefix:]  # (B, N, D): patch tokens only
                outputs[f"blocks.{index}"] = patches.transpose(1, 2).reshape(len(images), -1, height, width)
        return {layer: outputs[layer] for layer in self.layers}  # {layer: (B, D, h, w)}
