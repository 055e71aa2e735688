"""DSR's general object appearance model: a two-level VQ-VAE, trained offline (DSR phase 1).

DSR (Zavrtanik, Kristan & Skočaj, ECCV 2022, Sec. 3.1 and Fig. 2) encodes an image into two maps of
quantised features with a VQ-VAE-2-style autoencoder (Razavi et al., NeurIPS 2019):

    F_hi = E_hi(I)                          # (B, h, H/4, W/4): two stride-2 4×4 convolutions
    F_lo = E_lo(F_hi)                       # (B, h, H/8, W/8): one more
    Q_lo = VQ_lo(conv1×1(F_lo))             # nearest of K codes of dimension D (codebook K_lo)
    Q_hi = VQ_hi(conv1×1([F_hi, up(Q_lo)])) # the fine map also sees the coarse codes
    I_gen = D_gen([up(Q_lo), Q_hi])         # the general appearance decoder, (B, 3, H, W)

Both codebooks are updated by exponential moving averages (`adlearn.components.VectorQuantizerEMA`,
decay 0.99, commitment cost 0.25); the encoders and the decoder learn by the reconstruction loss
‖I − I_gen‖² plus the two commitment losses. The paper trains this model once, on ImageNet, and keeps
it frozen; the reference (``anomalib.models.image.dsr.torch_model.DiscreteLatentModel``) downloads the
result (``vq_model_pretrained_128_4096.pckl``).

Offline, `adlearn.models.dsr_vq_training.train_vq_model` trains it here on random crops and flips of the
photographs that the installed wheels ship (`adlearn.data.NaturalImageCrops`: scikit-image, scikit-learn
and matplotlib samples) — natural images only, as the paper — on the shared training loop
(`adlearn.train.Trainer`: progress bar, validation on held-out crops, early stopping, checkpoints),
cached per image size and recipe in ``$ADLEARN_CACHE/dsr/`` (default ``~/.cache/adlearn``). `Dsr.fit`
keeps it frozen (its ``vq_finetune_epochs`` option, off by default, fine-tunes it on the category
first).

Deliberate differences: (a) the codebooks start from encoder outputs of the first batch (not from
N(0, 1) vectors that the EMA update would leave dead), and a code whose EMA count falls below one
vector per batch is restarted at a random encoder output of the batch (Dhariwal et al., "Jukebox",
2020, Sec. 3.3: the codebook stays in use instead of collapsing onto a few codes);
(b) nothing else: the layer layout is the reference's, so its weights load (`load_vq_weights`).

Official weights: ``load_vq_weights(model, "vq_model_pretrained_128_4096.pckl")`` accepts the
reference's state dict (keys ``_encoder_b.*``, ``_encoder_t.*``, ``_pre_vq_conv_bot/top.*``,
``_vq_vae_bot/top._embedding.weight`` / ``._ema_cluster_size`` / ``._ema_w``, ``_decoder_b.*``,
``upsample_t.*``; num_hiddens 128, num_residual_layers 2, num_residual_hiddens 64, 4096 codes of
dimension 128) or a file `train_vq_model` wrote (this module's names).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adlearn.components import VectorQuantizerEMA

DEAD_CODE_THRESHOLD = 1.0  # EMA count (vectors per batch) below which a code is restarted (Jukebox's rule)


# ----------------------------------------------------------------------------- building blocks
class Residual(nn.Module):
    """x' = ReLU(x); x' + conv1×1(ReLU(conv3×3(x'))). The reference's in-place ReLU makes the skip carry
    ReLU(x) rather than x; it is written out here so that its trained weights mean the same."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return x + self.block(x)


class ResidualStack(nn.Module):
    """``layers`` `Residual` blocks, then a ReLU. (B, C, H, W) -> (B, C, H, W)"""

    def __init__(self, channels: int, layers: int, hidden: int):
        super().__init__()
        self.layers = nn.ModuleList([Residual(channels, hidden) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return F.relu(x)


class EncoderHi(nn.Module):
    """E_hi: image (B, 3, H, W) -> F_hi (B, h, H/4, W/4). The reference's ``EncoderBot``."""

    def __init__(self, hiddens: int, residual_layers: int, residual_hiddens: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, hiddens // 2, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(hiddens // 2, hiddens, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(hiddens, hiddens, 3, padding=1)
        self.residual = ResidualStack(hiddens, residual_layers, residual_hiddens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))


class EncoderLo(nn.Module):
    """E_lo: F_hi (B, h, H/4, W/4) -> F_lo (B, h, H/8, W/8). The reference's ``EncoderTop``."""

    def __init__(self, hiddens: int, residual_layers: int, residual_hiddens: int):
        super().__init__()
        self.conv1 = nn.Conv2d(hiddens, hiddens, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(hiddens, hiddens, 3, padding=1)
        self.residual = ResidualStack(hiddens, residual_layers, residual_hiddens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(F.relu(self.conv2(F.relu(self.conv1(x)))))


class GeneralDecoder(nn.Module):
    """D_gen: [up(Q_lo), Q_hi] (B, 2D, H/4, W/4) -> image (B, 3, H, W). The reference's ``DecoderBot``."""

    def __init__(self, in_channels: int, hiddens: int, residual_layers: int, residual_hiddens: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hiddens, 3, padding=1)
        self.residual = ResidualStack(hiddens, residual_layers, residual_hiddens)
        self.deconv1 = nn.ConvTranspose2d(hiddens, hiddens // 2, 4, stride=2, padding=1)
        self.deconv2 = nn.ConvTranspose2d(hiddens // 2, 3, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deconv2(F.relu(self.deconv1(self.residual(self.conv1(x)))))


# ----------------------------------------------------------------------------- the VQ-VAE
class GeneralAppearanceModel(nn.Module):
    """The two-level VQ-VAE (the reference's ``DiscreteLatentModel``); see the module docstring."""

    def __init__(
        self,
        hiddens: int = 128,
        residual_layers: int = 2,
        residual_hiddens: int = 64,
        num_embeddings: int = 4096,
        embedding_dim: int = 128,
    ):
        super().__init__()
        if num_embeddings < 2:
            raise ValueError(f"a codebook needs at least 2 codes, got num_embeddings={num_embeddings}")
        self.embedding_dim, self.num_embeddings = embedding_dim, num_embeddings
        self.encoder_hi = EncoderHi(hiddens, residual_layers, residual_hiddens)
        self.encoder_lo = EncoderLo(hiddens, residual_layers, residual_hiddens)
        self.pre_quantize_lo = nn.Conv2d(hiddens, embedding_dim, 1)
        self.pre_quantize_hi = nn.Conv2d(hiddens + embedding_dim, embedding_dim, 1)
        self.quantizer_lo = VectorQuantizerEMA(num_embeddings, embedding_dim, commitment_cost=0.25, decay=0.99)
        self.quantizer_hi = VectorQuantizerEMA(num_embeddings, embedding_dim, commitment_cost=0.25, decay=0.99)
        self.upsample_lo = nn.ConvTranspose2d(embedding_dim, embedding_dim, 4, stride=2, padding=1)
        self.decoder = GeneralDecoder(2 * embedding_dim, hiddens, residual_layers, residual_hiddens)

    def hi_features(self, encoded_hi: torch.Tensor, quantized_lo: torch.Tensor) -> torch.Tensor:
        """The fine map to quantise, z_hi = conv1×1([F_hi, up(Q_lo)]). -> (B, D, H/4, W/4)"""
        return self.pre_quantize_hi(torch.cat([encoded_hi, self.upsample_lo(quantized_lo)], dim=1))

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Images in [0, 1] (B, 3, H, W) -> {"encoded_hi": F_hi, "z_lo", "quantized_lo", "codes_lo",
        "z_hi", "quantized_hi", "codes_hi", "commitment"}: z before and Q after quantisation."""
        encoded_hi = self.encoder_hi(images)  # (B, h, H/4, W/4)
        z_lo = self.pre_quantize_lo(self.encoder_lo(encoded_hi))  # (B, D, H/8, W/8)
        quantized_lo, commitment_lo, codes_lo = self.quantizer_lo(z_lo)
        z_hi = self.hi_features(encoded_hi, quantized_lo)  # (B, D, H/4, W/4)
        quantized_hi, commitment_hi, codes_hi = self.quantizer_hi(z_hi)
        return {
            "encoded_hi": encoded_hi,
            "z_lo": z_lo,
            "quantized_lo": quantized_lo,
            "codes_lo": codes_lo,
            "z_hi": z_hi,
            "quantized_hi": quantized_hi,
            "codes_hi": codes_hi,
            "commitment": commitment_lo + commitment_hi,
        }

    def decode(self, quantized_lo: torch.Tensor, quantized_hi: torch.Tensor) -> torch.Tensor:
        """I_gen = D_gen([up(Q_lo), Q_hi]) -> (B, 3, H, W), [0, 1] space (not clamped)."""
        return self.decoder(torch.cat([self.upsample_lo(quantized_lo), quantized_hi], dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encode(images)
        return self.decode(features["quantized_lo"], features["quantized_hi"])

    # --- phase-1 training
    def training_loss(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"reconstruction": ‖I − I_gen‖², "commitment", "loss"}; the codebooks move by EMA (in train mode),
        start from data and restart their dead codes (see the module docstring)."""
        if self.training:
            self.initialise_codebooks(images)
        features = self.encode(images)
        reconstruction = F.mse_loss(self.decode(features["quantized_lo"], features["quantized_hi"]), images)
        if self.training:
            restart_dead_codes(self.quantizer_lo, features["z_lo"])
            restart_dead_codes(self.quantizer_hi, features["z_hi"])
        return {
            "reconstruction": reconstruction,
            "commitment": features["commitment"],
            "loss": reconstruction + features["commitment"],
        }

    @torch.no_grad()
    def initialise_codebooks(self, images: torch.Tensor) -> None:
        """Codebooks never updated yet (all EMA counts 0) start at random encoder outputs of ``images``."""
        every = torch.ones(self.num_embeddings, dtype=torch.bool, device=images.device)
        encoded_hi = self.encoder_hi(images)
        z_lo = self.pre_quantize_lo(self.encoder_lo(encoded_hi))
        if float(self.quantizer_lo.cluster_size.sum()) == 0:
            restart_codes(self.quantizer_lo, z_lo, every)
        if float(self.quantizer_hi.cluster_size.sum()) == 0:
            restart_codes(self.quantizer_hi, self.hi_features(encoded_hi, snap(self.quantizer_lo, z_lo)), every)


def snap(quantizer: VectorQuantizerEMA, z: torch.Tensor) -> torch.Tensor:
    """The nearest codes of z (B, D, h, w), without touching the codebook (no EMA step, no gradient)."""
    codes = quantizer.nearest(z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float())
    return quantizer.quantize(codes.view(z.shape[0], *z.shape[2:])).type_as(z)


@torch.no_grad()
def restart_codes(quantizer: VectorQuantizerEMA, z: torch.Tensor, which: torch.Tensor) -> None:
    """Set the codes ``which`` (K,) bool to random vectors of ``z`` (B, D, h, w) (plus a little noise),
    with EMA count 1 so that the moving average starts from them."""
    count = int(which.sum())
    if count == 0:
        return
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()  # (N, D)
    picks = flat[torch.randint(len(flat), (count,), device=flat.device)]
    picks = picks + 1e-3 * flat.std() * torch.randn_like(picks)
    quantizer.embedding[which] = picks
    quantizer.embedding_sum[which] = picks
    quantizer.cluster_size[which] = 1.0


def restart_dead_codes(quantizer: VectorQuantizerEMA, z: torch.Tensor) -> None:
    restart_codes(quantizer, z, quantizer.cluster_size < DEAD_CODE_THRESHOLD)


# ----------------------------------------------------------------------------- weights
_REFERENCE_NAMES = (
    ("_encoder_b.", "encoder_hi."),
    ("_encoder_t.", "encoder_lo."),
    ("_decoder_b.", "decoder."),
    ("_pre_vq_conv_top.", "pre_quantize_lo."),
    ("_pre_vq_conv_bot.", "pre_quantize_hi."),
    ("upsample_t.", "upsample_lo."),
    ("_vq_vae_top.", "quantizer_lo."),
    ("_vq_vae_bot.", "quantizer_hi."),
    ("_residual_stack._layers.", "residual.layers."),
    ("._block.", ".block."),
    ("_conv_trans_1.", "deconv1."),
    ("_conv_trans_2.", "deconv2."),
    ("_conv_1.", "conv1."),
    ("_conv_2.", "conv2."),
    ("_conv_3.", "conv3."),
    ("_embedding.weight", "embedding"),
    ("_ema_cluster_size", "cluster_size"),
    ("_ema_w", "embedding_sum"),
)


def from_reference_state_dict(state: dict) -> dict:
    """The reference's ``DiscreteLatentModel`` keys renamed to `GeneralAppearanceModel`'s."""
    renamed = {}
    for key, value in state.items():
        for old, new in _REFERENCE_NAMES:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def load_vq_weights(model: GeneralAppearanceModel, path: str | Path) -> None:
    """Load a phase-1 model from ``path``: the reference's file or one `train_vq_model` wrote.

    Errors name what does not match (missing or unexpected keys, a shape) and the fix.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"DSR: no VQ weights at {path} (vq_weights= a file, 'auto' to train them here "
            f"offline, or 'none' to start from random weights)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"DSR: {path} could not be read as a PyTorch state dict ({type(error).__name__}: "
            f"{error}); vq_weights needs the reference's vq_model_pretrained_128_4096.pckl or a file "
            f"written by adlearn.models.dsr_vq_training.train_vq_model"
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"DSR: {path} is not a state dict of tensors; vq_weights needs the reference's "
            f"vq_model_pretrained_128_4096.pckl or a file written by train_vq_model"
        )
    if any(key.startswith("_encoder_b.") for key in state):
        state = from_reference_state_dict(state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"DSR: {path} does not hold a DSR VQ model: missing keys {missing[:4]}"
            f"{' ...' if len(missing) > 4 else ''}, unexpected keys {unexpected[:4]}"
            f"{' ...' if len(unexpected) > 4 else ''} (see adlearn.models.dsr_vq for the key layout)"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            codes = state.get("quantizer_lo.embedding")
            hint = (
                ""
                if codes is None
                else (
                    f"; this file has {codes.shape[0]} codes of dimension {codes.shape[1]}: "
                    f"create the model with num_embeddings={codes.shape[0]}, "
                    f"embedding_dim={codes.shape[1]} (and the file's num_hiddens)"
                )
            )
            raise ValueError(
                f"DSR: {path} does not match this model's size: {key} has shape "
                f"{tuple(value.shape)}, the model expects {tuple(expected[key].shape)}{hint}"
            )
    model.load_state_dict(state)
