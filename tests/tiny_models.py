"""The smallest configuration of every registered model, shared by the tests that run all of them
(`test_model_contract.py`, `test_rng.py`) and the per-model files that need a tiny one.

64 px (128 for CS-Flow, whose three scales need it), the offline efficientnet_lite0 backbone, one or two
training steps in batches of four. A new model adds its entry here; `test_model_contract.py` fails until
it does.
"""

from __future__ import annotations

BACKBONE = "efficientnet_lite0"  # packaged offline weights
STEPS = dict(max_steps=2, batch_size=4)  # trained models: two steps; memory-bank models: one pass

TINY: dict[str, dict] = {
    # A video model: fitted on tiny synthetic clips (`tiny_clips` below); at 96 px every video has regions.
    "ai_vad": dict(backbone=BACKBONE, image_size=96, min_bbox_area=10, deep_crop_size=32),
    "cfa": dict(backbone=BACKBONE, image_size=64, **STEPS),
    "cflow": dict(backbone=BACKBONE, image_size=64, coupling_blocks=1, fiber_batch_size=64, **STEPS),
    "csflow": dict(backbone=BACKBONE, image_size=128, cross_conv_hidden_channels=8, n_coupling_blocks=1, **STEPS),
    "dfkde": dict(backbone=BACKBONE, image_size=64, n_pca_components=4),  # 12 images: fewer than the default 16
    "dfm": dict(backbone=BACKBONE, image_size=64, pooling_kernel_size=2),
    "draem": dict(image_size=64, reconstruction_width=8, discrimination_width=4, **STEPS),
    # DSR trains in two phases (restriction, upsampling): one epoch each. Its general appearance (VQ)
    # model is not pretrained here (vq_weights="none").
    "dsr": dict(
        image_size=64,
        num_hiddens=16,
        num_residual_hiddens=8,
        num_embeddings=32,
        embedding_dim=8,
        detection_width=4,
        upsampling_width=4,
        vq_weights="none",
        max_epochs=2,
        batch_size=4,
    ),
    # No distilled teacher (a random PDN), no natural-image penalty stream (it decodes photographs); the
    # map quantiles come from held-out images, validated on the loss.
    "efficient_ad": dict(
        image_size=64,
        teacher_weights="none",
        teacher_out_channels=8,
        penalty=False,
        val_fraction=0.25,
        val_metric="loss",
        **STEPS,
    ),
    "fastflow": dict(backbone=BACKBONE, image_size=64, flow_steps=2, hidden_ratio=0.5, **STEPS),
    "ganomaly": dict(image_size=64, n_features=8, latent_size=16, **STEPS),
    "padim": dict(backbone=BACKBONE, image_size=64, n_features=10),
    "patchcore": dict(backbone=BACKBONE, image_size=64),
    "reverse_distillation": dict(backbone=BACKBONE, image_size=64, **STEPS),
    # Selective search at one scale; 64 px images hold few boxes of 25 px, so smaller ones are kept.
    "rkde": dict(
        backbone=BACKBONE, image_size=64, selective_search_scales=(100.0,), min_box_size=8, n_pca_components=4
    ),
    "stfpm": dict(backbone=BACKBONE, image_size=64, **STEPS),
    "uflow": dict(backbone=BACKBONE, image_size=64, flow_steps=1, **STEPS),
    # A random open_clip tower of the reference's family at 64 px (a 4 × 4 patch grid), zero- and few-shot.
    "winclip": dict(
        backbone=dict(
            embed_dim=16,
            vision_cfg=dict(image_size=64, layers=1, width=32, patch_size=16, head_width=16),
            text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
        ),
        weights="none",
        k_shot=2,
    ),
}


def tiny_clips(size: int = 96):
    """A video model's tiny data: ``(training ClipDataset, probe clips (4, 2, 3, size, size))`` from the
    synthetic surveillance videos (three short training videos; probe clips of the first test video)."""
    import torch

    from adlearn.data import ClipDataset, synthetic_surveillance

    shape = (size, size)
    train = ClipDataset(synthetic_surveillance("train", n_videos=3, n_frames=8, size=shape))
    test = ClipDataset(synthetic_surveillance("test", n_videos=1, n_frames=12, size=shape))
    return train, torch.stack([test[i]["frames"] for i in (0, 4, 7, 10)])
