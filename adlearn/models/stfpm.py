"""STFPM — Student-Teacher Feature Pyramid Matching (Wang, Wu, Cui & Huang, BMVC 2021, arXiv:2103.04257).
Reference implementation: ``anomalib.models.image.stfpm`` (``torch_model``, ``loss``, ``anomaly_map``).

Idea: a *teacher* network pretrained on ImageNet describes images with a pyramid of feature maps.
A *student* with the same architecture, randomly initialised, is trained to reproduce the teacher's
features — on normal images only. Where the image looks like the training data the student has
learned to agree; on a defect (never seen) the two disagree. The disagreement, position by
position and layer by layer, is the anomaly map.

The steps, in the order of the paper (Sec. 3):

1. Teacher (ImageNet weights, frozen) and student (same architecture, random init, trainable)
   each give the maps of ``layer1..layer3``: t_l, s_l of shape (B, C_l, h_l, w_l).
2. Normalise every position's feature vector along the channels (unit L2 norm):
   t̂ = t / ‖t‖,  ŝ = s / ‖s‖.
3. Loss (Sec. 3.2, Eqs. 1–3: ½‖t̂ − ŝ‖² per position, averaged over the positions of a layer,
   summed over the layers with weights α_l = 1; summed over the batch, as the reference does):

       L = Σ_l  1 / (2·h_l·w_l) · Σ_{b, c, i, j} (t̂_l − ŝ_l)²

   Trained with SGD(lr 0.4, momentum 0.9, weight decay 1e-3) on the student's parameters.
4. Anomaly map (Eqs. 4–5): per layer and position ½‖t̂ − ŝ‖² (= 1 − cos(t, s), between 0 and 2),
   bilinearly upsampled to the image size; the layer maps are **multiplied** (a pixel is anomalous
   only where every scale agrees it is): `adlearn.models.common.combine_layer_maps`, mode "multiply".
5. Image score = the map's maximum.

Defaults (the reference's): backbone ``resnet18`` (teacher weights from the timm hub), layers
``layer1..layer3``, 100 epochs and early-stopping patience 5 (used when ``fit`` gets ``val_data``),
batch size 32, no gradient clipping. ``backbone="efficientnet_lite0"`` uses packaged offline ImageNet
weights (its layers 1–3 map to ``blocks.1/2/4``): what the tests, notebook smoke runs and CI use.

Deliberate differences:

* The reference stops early on the *test* set's pixel AUROC; here early stopping only happens on a
  validation set the caller passes (``fit(train, val_data=...)``) or holds out (``val_fraction=0.2``:
  the loss on unseen *normal* images), so by default the model trains for ``max_epochs``. Because the
  loss is a sum over the batch, the effective step size grows with the batch size: lr 0.4 is the
  paper's value for batches of 32.
* ``precise_bn=True`` (our addition, default): the student is trained with batch norms, and at SGD
  lr 0.4 its weights move so fast that the running statistics it predicts with (exponential averages
  over the last ~10 batches, each from older weights) no longer fit it. Before every validation and
  at the end of training they are re-estimated for the current weights (`adlearn.train`,
  ``batch_norm_forward``: one pass of the student over the training images, no gradients).
  ``precise_bn=False`` gives the reference's behaviour. The learning curves with and without it are
  in docs/log/2026-12-06-benchmarks-history.md ("STFPM").
"""

from __future__ import annotations

import torch

from adlearn.components import TimmFeatureExtractor
from adlearn.models.base import Prediction, TrainedModel
from adlearn.models.common import combine_layer_maps, cosine_distance, prediction_from_map


def normalized_difference(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """Step 2 and the per-position distance of steps 3–4: ½‖t̂ − ŝ‖² along the channels (= 1 − cos).

    (B, C, h, w), (B, C, h, w) -> (B, 1, h, w)
    """
    return cosine_distance(teacher, student)


def stfpm_loss(teacher_features: list[torch.Tensor], student_features: list[torch.Tensor]) -> torch.Tensor:
    """Step 3: Σ_layers 1/(2·h·w) Σ_{batch, channels, positions} (t̂ − ŝ)²  (a scalar)."""
    loss = 0.0
    for teacher, student in zip(teacher_features, student_features):
        height, width = teacher.shape[-2:]
        loss = loss + normalized_difference(teacher, student).sum() / (height * width)
    return loss


def stfpm_anomaly_map(
    teacher_features: list[torch.Tensor], student_features: list[torch.Tensor], image_size: tuple[int, int]
) -> torch.Tensor:
    """Step 4: product over layers of the upsampled ½‖t̂ − ŝ‖² maps. -> (B, H, W)"""
    layer_maps = [normalized_difference(t, s) for t, s in zip(teacher_features, student_features)]  # [(B, 1, h, w)]
    return combine_layer_maps(layer_maps, image_size, "multiply").squeeze(1)


class Stfpm(TrainedModel):
    name = "stfpm"
    # The paper's training (Sec. 4.1); precise_bn is our addition (see the docstring).
    training_defaults = {"max_epochs": 100, "patience": 5, "precise_bn": True}
    presets = {"cpu": {"backbone": "efficientnet_lite0", "val_fraction": 0.2, "max_epochs": 25}}

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: tuple[str, ...] = ("layer1", "layer2", "layer3"),
        pretrained: str = "auto",
        lr: float = 0.4,
        momentum: float = 0.9,
        weight_decay: float = 1e-3,
        image_size: int = 256,
        center_crop: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
        **training,
    ):
        super().__init__(
            image_size=image_size, center_crop=center_crop, device=device, seed=seed, batch_size=batch_size, **training
        )
        self.save_hyperparameters()
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        # Step 1: the frozen teacher, and a student of the same shape with random weights.
        self.teacher = TimmFeatureExtractor(backbone, list(layers), pre_trained=pretrained)
        self.student = TimmFeatureExtractor(backbone, list(layers), pre_trained="none", requires_grad=True)

    def extract_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Step 1: ([t_1, t_2, t_3], [s_1, s_2, s_3]), each (B, C_l, h_l, w_l)."""
        teacher = list(self.teacher(images).values())  # no gradient: the teacher is frozen
        student = list(self.student(images).values())
        return teacher, student

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(
            self.student.parameters(), lr=self.lr, momentum=self.momentum, dampening=0.0, weight_decay=self.weight_decay
        )
        return optimizer, None

    def training_step(self, batch: dict, trainer=None) -> torch.Tensor:
        teacher, student = self.extract_features(batch["image"])
        return stfpm_loss(teacher, student)

    def batch_norm_forward(self, batch: dict) -> None:
        """``precise_bn``: only the student has batch norms to re-estimate (the teacher's are folded)."""
        self.student(batch["image"])

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        teacher, student = self.extract_features(images)
        # The product of small numbers: compute it in float32 even under autocast.
        teacher, student = [t.float() for t in teacher], [s.float() for s in student]
        return stfpm_anomaly_map(teacher, student, images.shape[-2:])  # (B, H, W)

    def predict_step(self, images: torch.Tensor) -> Prediction:
        return prediction_from_map(self.anomaly_map(images))  # image score = max (step 5)
