"""GANomaly — semi-supervised anomaly detection via adversarial training (Akçay, Atapour-Abarghouei &
Breckon, ACCV 2018, arXiv:1805.06725).

Idea: learn to *compress* normal images. A generator encodes an image x into a small code z, decodes
z into a reconstruction x̂, and encodes x̂ again into ẑ. Trained on normal images only, the two codes
agree for normal images; an anomalous image is squeezed through a code that has no words for the
defect, so x̂ comes out "normalised" and its code ẑ differs from z. The anomaly score is how far apart
the two codes are. A discriminator, trained against the generator as in a GAN, pushes x̂ to look real.
An image-level model: there is no anomaly map.

The steps, in the order of the paper (Sec. 3, Fig. 2):

1. Generator G = encoder G_E → decoder G_D → encoder E (DCGAN networks, Radford et al. 2016): 4×4
   convolutions with stride 2 halve the image down to 4×4 (batch norm and LeakyReLU 0.2, none on the
   first), a last 4×4 convolution gives the code z = G_E(x), (B, latent_size, 1, 1). The decoder
   mirrors it with transposed convolutions (batch norm, ReLU) and ends in tanh: x̂ = G_D(z) in
   [−1, 1]. The second encoder has the same shape and its own weights: ẑ = E(x̂).
2. Discriminator D: the same encoder with one output; D(x) = σ(logit), and f(x), the feature map
   before its last convolution, (B, C, 4, 4).
3. Generator loss (Eqs. 1–4), weights w_adv = 1, w_con = 50, w_enc = 1:

       L_adv = ‖f(x) − f(x̂)‖²   (feature matching, mean over elements)
       L_con = ‖x − x̂‖₁         (contextual, mean absolute error)
       L_enc = ‖z − ẑ‖²          (encoder, mean squared error)
       L_G   = w_adv·L_adv + w_con·L_con + w_enc·L_enc

4. Discriminator loss: binary cross-entropy, real images → 1, reconstructions → 0 (halved sum).
   Two Adam optimizers (lr 2e-4, betas (0.5, 0.999)), stepped alternately on every batch: first the
   generator, then the discriminator on the *detached* reconstruction.
5. Score (Eq. 5): A(x) = mean over the code of (z − ẑ)². Higher = more anomalous.

Defaults (the reference implementation, ``anomalib.models.image.ganomaly``): ``n_features=64``,
``latent_size=100``, ``extra_layers=0``, the loss weights and optimizers above, batch size 32, 100
epochs with early-stopping patience 3 (used with validation data). Weights: initialised as DCGAN does
(convolutions N(0, 0.02), batch-norm scales N(1, 0.02), shifts 0), as the paper's code does. The
reference means to (``GanomalyModel.weights_init`` in ``anomalib.models.image.ganomaly.torch_model``) but
calls it once on the generator and once on the discriminator module instead of applying it to their
layers; it only acts on modules whose class name holds "Conv" or "BatchNorm", so it never reaches a layer
and the reference's layers keep PyTorch's default initialisation.

Deliberate differences from ``anomalib.models.image.ganomaly`` (its ``torch_model`` and ``loss``):
(a) L_adv matches the discriminator's *features* f (the paper's Eq. 1 and the original code); the
anomalib loss compares the two sigmoid outputs D(x), D(x̂) instead (``adversarial="probability"``
reproduces it). (b) L_enc is the paper's L2; anomalib uses a smooth L1. (c) The networks see images
in [−1, 1], the range of the decoder's tanh (the package's ImageNet-normalised images are mapped
back to [0, 1], then to [−1, 1]); anomalib feeds ImageNet-normalised values, which a tanh can never
reach. (d) The image side must be a power of two (the DCGAN pyramid halves it to 4 exactly): a clear
error instead of anomalib's zero-padding to the next power of two; the first convolution pads by 1
(DCGAN) instead of anomalib's 4. (e) Scores are not min–max normalised over the test set (that
needs the whole test set and does not change any ranking metric). (f) The original code re-initialises
a discriminator whose loss falls below 1e-5; neither anomalib nor this file does. (g) Every convolution and
batch norm gets the DCGAN initialisation above; anomalib's layers keep PyTorch's defaults.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adlearn.data.transforms import denormalize
from adlearn.models.base import Prediction, TrainedModel

ADVERSARIAL_LOSSES = ("features", "probability")


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: convolution weights ~ N(0, 0.02); batch-norm scale ~ N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def to_tanh_range(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised images -> [−1, 1], the range of the decoder's tanh (difference (c))."""
    return denormalize(images) * 2 - 1


# ----------------------------------------------------------------------------- step 1-2: networks
class DcganEncoder(nn.Module):
    """(B, C, S, S) -> code (B, latent_size, 1, 1); ``features`` is the (B, width, 4, 4) map before it.

    S -> S/2 (conv 4×4 stride 2, LeakyReLU), ``extra_layers`` 3×3 blocks, then conv-BN-LeakyReLU
    stages doubling the width and halving the side until 4×4, then a 4×4 convolution without padding.
    """

    def __init__(self, image_side: int, channels: int, n_features: int, latent_size: int, extra_layers: int = 0):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, n_features, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(extra_layers):
            layers += [
                nn.Conv2d(n_features, n_features, 3, 1, 1, bias=False),
                nn.BatchNorm2d(n_features),
                nn.LeakyReLU(0.2, True),
            ]
        side, width = image_side // 2, n_features
        while side > 4:
            layers += [
                nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False),
                nn.BatchNorm2d(2 * width),
                nn.LeakyReLU(0.2, True),
            ]
            side, width = side // 2, 2 * width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, latent_size, 4, 1, 0, bias=False)  # 4×4 -> 1×1
        self.width = width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, latent_size, 1, 1)


class DcganDecoder(nn.Module):
    """Code (B, latent_size, 1, 1) -> image (B, C, S, S) in [−1, 1]: the encoder mirrored."""

    def __init__(self, image_side: int, channels: int, n_features: int, latent_size: int, extra_layers: int = 0):
        super().__init__()
        stages = int(math.log2(image_side // 8))  # the encoder's halvings after the first convolution
        width = n_features * 2**stages
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_size, width, 4, 1, 0, bias=False),  # 1 -> 4
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(stages):  # 4 -> S/2
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        for _ in range(extra_layers):
            layers += [nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, True)]
        layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=False), nn.Tanh()]  # S/2 -> S
        self.layers = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.layers(code)


class Generator(nn.Module):
    """x -> (x̂, z, ẑ): encoder G_E, decoder G_D, second encoder E (step 1)."""

    def __init__(self, image_side: int, channels: int, n_features: int, latent_size: int, extra_layers: int = 0):
        super().__init__()
        self.encoder = DcganEncoder(image_side, channels, n_features, latent_size, extra_layers)
        self.decoder = DcganDecoder(image_side, channels, n_features, latent_size, extra_layers)
        self.encoder_2 = DcganEncoder(image_side, channels, n_features, latent_size, extra_layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(x)  # (B, latent, 1, 1)
        fake = self.decoder(z)  # (B, C, S, S)
        z_hat = self.encoder_2(fake)  # (B, latent, 1, 1)
        return fake, z, z_hat


class Discriminator(nn.Module):
    """x -> (logit (B,), features f(x) (B, width, 4, 4)) (step 2); D(x) = sigmoid(logit)."""

    def __init__(self, image_side: int, channels: int, n_features: int, extra_layers: int = 0):
        super().__init__()
        self.encoder = DcganEncoder(image_side, channels, n_features, 1, extra_layers)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder.features(images)
        return self.encoder.head(features).flatten(), features


# ----------------------------------------------------------------------------- steps 3-5: losses, score
def ganomaly_loss(
    images: torch.Tensor,
    fake: torch.Tensor,
    z: torch.Tensor,
    z_hat: torch.Tensor,
    real_adversarial: torch.Tensor,
    fake_adversarial: torch.Tensor,
    w_adv: float = 1.0,
    w_con: float = 50.0,
    w_enc: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Step 3, the generator's loss: {"adversarial", "contextual", "encoder", "loss"} (Eqs. 1–4; every term a mean).

    ``real_adversarial``/``fake_adversarial``: f(x), f(x̂) (or D(x), D(x̂) for anomalib's variant).
    """
    adversarial = F.mse_loss(fake_adversarial, real_adversarial)
    contextual = F.l1_loss(fake, images)
    encoder = F.mse_loss(z_hat, z)
    return {
        "adversarial": adversarial,
        "contextual": contextual,
        "encoder": encoder,
        "loss": w_adv * adversarial + w_con * contextual + w_enc * encoder,
    }


def discriminator_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """Step 4: ½ [BCE(D(x), 1) + BCE(D(x̂), 0)], on logits (the numerically stable form of BCE∘sigmoid)."""
    real = F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
    fake = F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
    return 0.5 * (real + fake)


def latent_distance(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    """Step 5: A(x) = mean_k (z_k − ẑ_k)². (B, latent, 1, 1) × 2 -> (B,)"""
    return (z - z_hat).pow(2).flatten(1).mean(1)


# ----------------------------------------------------------------------------- the model
class Ganomaly(TrainedModel):
    name = "ganomaly"
    task = "classification"  # an image score, no anomaly map
    automatic_optimization = False  # two optimizers, stepped in turn (step 4)
    # The reference's training: 100 epochs, early-stopping patience 3 (with validation data).
    training_defaults = {"max_epochs": 100, "patience": 3}
    presets = {"cpu": {"image_size": 64, "n_features": 32, "max_epochs": 15}}

    def __init__(
        self,
        n_features: int = 64,
        latent_size: int = 100,
        extra_layers: int = 0,
        w_adv: float = 1.0,
        w_con: float = 50.0,
        w_enc: float = 1.0,
        adversarial: str = "features",
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        image_size: int = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
        **training,
    ):
        if adversarial not in ADVERSARIAL_LOSSES:
            raise ValueError(f"adversarial must be one of {ADVERSARIAL_LOSSES}, got {adversarial!r}")
        for name, value in (("n_features", n_features), ("latent_size", latent_size)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(extra_layers, int) and extra_layers >= 0):
            raise ValueError(f"extra_layers must be an integer >= 0, got {extra_layers!r}")
        super().__init__(
            image_size=image_size, center_crop=center_crop, device=device, seed=seed, batch_size=batch_size, **training
        )
        self.save_hyperparameters()
        height, width = self.input_size
        if height != width or height < 8 or height & (height - 1):
            raise ValueError(
                f"GANomaly's DCGAN networks halve a square image down to 4x4: the side must be a power "
                f"of two >= 8, got {height}x{width}. Use e.g. image_size=64 (or 128, 256)"
            )
        self.weights = {"w_adv": w_adv, "w_con": w_con, "w_enc": w_enc}
        self.adversarial, self.lr, self.betas = adversarial, lr, tuple(betas)
        self.generator = Generator(height, 3, n_features, latent_size, extra_layers)
        self.discriminator = Discriminator(height, 3, n_features, extra_layers)
        self.apply(dcgan_init)

    def configure_optimizers(self):
        adam = lambda module: torch.optim.Adam(module.parameters(), lr=self.lr, betas=self.betas)  # noqa: E731
        return {"generator": adam(self.generator), "discriminator": adam(self.discriminator)}

    def losses(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Steps 1–3 on one batch: (generator losses, D's logit on x, the reconstruction x̂)."""
        x = to_tanh_range(images)  # (B, 3, S, S) in [−1, 1]
        fake, z, z_hat = self.generator(x)
        real_logit, real_features = self.discriminator(x)
        fake_logit, fake_features = self.discriminator(fake)
        if self.adversarial == "features":
            real_adv, fake_adv = real_features.detach(), fake_features  # f(x) is the target
        else:
            real_adv, fake_adv = torch.sigmoid(real_logit).detach(), torch.sigmoid(fake_logit)
        return ganomaly_loss(x, fake, z, z_hat, real_adv, fake_adv, **self.weights), real_logit, fake

    def training_step(self, batch: dict, trainer) -> dict[str, torch.Tensor]:
        g_losses, real_logit, fake = self.losses(batch["image"])
        trainer.optimizer_step(g_losses["loss"], "generator")
        fake_logit, _ = self.discriminator(fake.detach())  # no gradient back into the generator
        d_loss = discriminator_loss(real_logit, fake_logit)
        trainer.optimizer_step(d_loss, "discriminator")
        return {"generator": g_losses["loss"].detach(), "discriminator": d_loss.detach()}

    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        g_losses, real_logit, fake = self.losses(batch["image"])
        return {
            "generator": g_losses["loss"],
            "discriminator": discriminator_loss(real_logit, self.discriminator(fake)[0]),
        }

    def extract_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 1 on ImageNet-normalised images: (x̂ in [−1, 1] (B, 3, S, S), z, ẑ (B, latent, 1, 1))."""
        return self.generator(to_tanh_range(images))

    def predict_step(self, images: torch.Tensor) -> Prediction:
        _, z, z_hat = self.extract_features(images)
        return Prediction(pred_score=latent_distance(z.float(), z_hat.float()), anomaly_map=None)
