"""The compositional prompt ensemble of WinCLIP, and CLIP's two-class score
(Jeong et al., CVPR 2023, Sec. 4.1 "Compositional prompt ensemble", Eq. 1 and Fig. 3;
reference: ``anomalib.models.image.winclip``, its ``prompting`` and ``utils`` modules).

CLIP scores an image against sentences. WinCLIP writes two families of them for an object class
(here "bottle"):

* **state words** — 7 normal ("bottle", "flawless bottle", "perfect bottle", "unblemished bottle",
  "bottle without flaw", "... without defect", "... without damage") and 4 anomalous ("damaged bottle",
  "bottle with flaw", "... with defect", "... with damage");
* **templates** — 21 photo descriptions ("a cropped photo of the {}.", "a photo of a {} for visual
  inspection.", ...).

Every state goes into every template: 7 × 21 = 147 normal and 4 × 21 = 84 anomalous sentences. The
text tower encodes each; the mean of each family is that class's text embedding, so the ensemble gives
two vectors, ``[normal, anomalous]``. An image (or window) embedding x then scores

    score(x) = softmax([cos(x, t_normal), cos(x, t_anomalous)] / τ)[anomalous]     τ = 0.07   (Eq. 1)

the probability CLIP gives the anomalous sentence family (τ is CLIP's own temperature).

The templates are the reference's list: its 21 lines give "a jpeg corrupted photo of the {}." twice
and leave out the "a cropped photo of a {}." and "a jpeg corrupted photo of a {}." variants of the
paper's figure; they are kept so that the text embeddings are the reference's. `PAPER_TEMPLATES` are the
paper's 22 distinct ones, for comparison.

No tokenizer or text tower is imported here: `text_embeddings` takes them as functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

#: States of a normal object ({} = the class name), paper Fig. 3 (a).
NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

#: States of an anomalous object, paper Fig. 3 (a).
ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

#: The reference's 21 templates, in its order (one of them twice; see the module docstring).
TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)

#: The paper's 22 distinct templates (Fig. 3 (b)): each phrase once with "a" and once with "the".
PAPER_TEMPLATES: tuple[str, ...] = tuple(
    template
    for phrase in (
        "a cropped photo of {} {{}}.",
        "a close-up photo of {} {{}}.",
        "a bright photo of {} {{}}.",
        "a dark photo of {} {{}}.",
        "a jpeg corrupted photo of {} {{}}.",
        "a blurry photo of {} {{}}.",
        "a photo of {} {{}}.",
        "a photo of {} small {{}}.",
        "a photo of {} large {{}}.",
        "a photo of {} {{}} for visual inspection.",
        "a photo of {} {{}} for anomaly detection.",
    )
    for template in (phrase.format("a"), phrase.format("the"))
)

#: CLIP's softmax temperature (Radford et al., 2021), used by WinCLIP's Eq. 1.
TEMPERATURE = 0.07


def prompt_ensemble(class_name: str, templates: Sequence[str] = TEMPLATES) -> tuple[list[str], list[str]]:
    """All (state, template) sentences for ``class_name``: ``(normal, anomalous)`` lists, state-major
    (the 21 templates of the first state, then of the second, ...): 147 and 84 sentences by default."""
    if not isinstance(class_name, str) or not class_name.strip():
        raise ValueError(f"class_name must be a non-empty word such as 'bottle' (got {class_name!r})")
    normal = [template.format(state.format(class_name)) for state in NORMAL_STATES for template in templates]
    anomalous = [template.format(state.format(class_name)) for state in ANOMALOUS_STATES for template in templates]
    return normal, anomalous


@torch.no_grad()
def text_embeddings(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenize: Callable[[list[str]], torch.Tensor],
    class_name: str,
    templates: Sequence[str] = TEMPLATES,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The two class embeddings of the ensemble: the mean text embedding of each sentence family,
    ``(2, D)`` ordered ``[normal, anomalous]`` (the sentences' embeddings are averaged as the text
    tower returns them, unnormalised, as the reference does)."""
    rows = []
    for sentences in prompt_ensemble(class_name, templates):
        embedded = encode_text(tokenize(sentences).to(device))  # (n_sentences, D)
        rows.append(embedded.mean(dim=0))  # (D,)
    return torch.stack(rows)  # (2, D)


def class_scores(
    embeddings: torch.Tensor, text: torch.Tensor, temperature: float = TEMPERATURE, target: int = 1
) -> torch.Tensor:
    """Eq. 1: softmax over the classes of cos(embedding, class embedding) / τ, at class ``target``
    (1 = anomalous). embeddings (..., D), text (n_classes, D) -> (...)."""
    cosine = F.normalize(embeddings, dim=-1) @ F.normalize(text, dim=-1).T  # (..., n_classes)
    return (cosine / temperature).softmax(dim=-1)[..., target]


__all__ = [
    "ANOMALOUS_STATES",
    "NORMAL_STATES",
    "PAPER_TEMPLATES",
    "TEMPERATURE",
    "TEMPLATES",
    "class_scores",
    "prompt_ensemble",
    "text_embeddings",
]
