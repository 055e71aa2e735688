"""The shared training loop (adlearn/train/) and the TrainedModel base class, on a toy model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adlearn.models import TrainedModel
from adlearn.models.common import prediction_from_map
from adlearn.train import History, Trainer, hold_out, rank_auroc, resolve_amp

SIZE = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


class MeanImage(TrainedModel):
    """Toy trained model: learns the mean training image; anomaly map = squared distance to it."""

    name = "mean_image"

    training_defaults = {"max_epochs": 5}

    def __init__(
        self,
        lr: float = 0.2,
        image_size: int = SIZE,
        device: str = "cpu",
        seed: int = 0,
        batch_size: int = 4,
        **training,
    ):
        super().__init__(image_size=image_size, device=device, seed=seed, batch_size=batch_size, **training)
        self.save_hyperparameters()
        self.lr = lr
        self.center = nn.Parameter(torch.zeros(3, SIZE, SIZE))

    def configure_optimizers(self):
        return torch.optim.SGD([self.center], lr=self.lr), None

    def training_step(self, batch, trainer=None):
        return 0.5 * (batch["image"] - self.center).pow(2).sum(dim=(1, 2, 3)).mean()  # gradient: center - mean

    def predict_step(self, images):
        return prediction_from_map((images - self.center).pow(2).mean(1))


class ToyData(Dataset):
    """Normal images ~ 1 + noise; anomalous ones have a bright 3x3 square (their mask)."""

    def __init__(self, n_normal: int, n_anomalous: int = 0, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.items = []
        for index in range(n_normal + n_anomalous):
            image = 1.0 + 0.1 * torch.randn(3, SIZE, SIZE, generator=generator)
            mask = torch.zeros(SIZE, SIZE)
            if index >= n_normal:
                mask[2:5, 2:5] = 1
                image = image + 3 * mask
            self.items.append(
                {
                    "image": image,
                    "mask": mask,
                    "label": int(index >= n_normal),
                    "defect_type": "square" if index >= n_normal else "good",
                }
            )

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def scripted_metric(values):
    """A val_metric_fn returning the given values one epoch after the other."""
    values = iter(values)
    return lambda model, data: next(values)


def center_per_epoch(store):
    return lambda trainer, record: store.append(trainer.model.center.detach().clone())


def test_loss_decreases_and_history_is_recorded():
    model = MeanImage(max_epochs=6).fit(ToyData(12), verbose=False)
    history = model.history
    assert history.epoch == [1, 2, 3, 4, 5, 6]
    assert history.loss[-1] < 0.2 * history.loss[0]
    assert len(history.step_loss) == history.steps == 18  # 12 images / batch 4 = 3 steps per epoch
    assert history.val == [None] * 6 and history.stopped == "max_epochs"
    assert history.lr == [0.2] * 6 and len(history.seconds) == 6
    assert model.is_fitted and torch.allclose(model.center, torch.ones(3, SIZE, SIZE), atol=0.15)


@pytest.mark.parametrize(
    "max_epochs, max_steps, steps, epochs, stopped",
    [
        (None, 5, 5, 2, "max_steps"),  # the second epoch ends after 2 of its 3 batches
        (2, None, 6, 2, "max_epochs"),
        (10, 4, 4, 2, "max_steps"),  # whichever ends first
        (1, 100, 3, 1, "max_epochs"),
    ],
)
def test_max_steps_and_max_epochs_bound_training(max_epochs, max_steps, steps, epochs, stopped):
    model = MeanImage(max_epochs=max_epochs, max_steps=max_steps).fit(ToyData(12), verbose=False)
    assert (model.history.steps, len(model.history.epoch), model.history.stopped) == (steps, epochs, stopped)


def test_a_training_end_is_required():
    with pytest.raises(ValueError, match="max_epochs or max_steps"):
        MeanImage(max_epochs=None, max_steps=None)
    with pytest.raises(ValueError, match="positive integer"):
        Trainer(MeanImage(), max_epochs=0)


def test_early_stopping_after_patience_epochs_restores_the_best_weights(capsys):
    centers = []
    values = [0.5, 0.7, 0.6, 0.65, 0.69, 0.9, 0.9, 0.9]  # best at epoch 2, then 3 worse epochs
    model = MeanImage(max_epochs=8, patience=3)
    model.fit(
        ToyData(12),
        ToyData(4, 4, seed=1),
        val_metric_fn=scripted_metric(values),
        val_metric="my_score",
        callbacks=[center_per_epoch(centers)],
    )
    history = model.history
    assert history.epoch == [1, 2, 3, 4, 5] and history.stopped == "early_stopping"
    assert history.val == values[:5] and history.val_metric == "my_score"
    assert (history.best_epoch, history.best_value) == (2, 0.7)
    assert torch.equal(model.center, centers[1]) and not torch.equal(model.center, centers[-1])
    out = capsys.readouterr().out
    assert "stopping early" in out and "restored the best weights, epoch 2" in out
    assert out.count("epoch ") >= 5  # one line per epoch


def test_watching_without_restoring_keeps_the_last_epoch():
    centers = []
    model = MeanImage(max_epochs=3)
    model.fit(
        ToyData(12),
        ToyData(4, 4, seed=1),
        val_metric_fn=scripted_metric([0.9, 0.5, 0.4]),
        restore_best=False,
        callbacks=[center_per_epoch(centers)],
        verbose=False,
    )
    assert model.history.best_epoch == 1 and torch.equal(model.center, centers[-1])


def test_loss_is_minimised_and_auroc_maximised():
    model = MeanImage(max_epochs=3, val_metric="loss")
    model.fit(ToyData(12), ToyData(4, 4, seed=1), verbose=False)
    assert model.history.val_metric == "loss"
    assert model.history.val[0] > model.history.val[-1] and model.history.best_epoch == 3


@pytest.mark.parametrize("n_anomalous, expected", [(4, "pixel_auroc"), (0, "loss")])
def test_auto_val_metric(n_anomalous, expected):
    model = MeanImage(max_epochs=2).fit(ToyData(12), ToyData(4, n_anomalous, seed=1), verbose=False)
    assert model.history.val_metric == expected
    if expected == "pixel_auroc":
        assert model.history.val[-1] > 0.95  # the bright square is found


class Interrupting(MeanImage):
    """Raises KeyboardInterrupt (as Ctrl-C would) at one training step."""

    interrupt_at = 8

    def training_step(self, batch, trainer=None):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        return super().training_step(batch)


def test_keyboard_interrupt_keeps_the_best_weights_so_far(capsys):
    centers = []
    model = Interrupting(max_epochs=10)  # 3 steps per epoch: step 8 is in epoch 3
    model.fit(
        ToyData(12),
        ToyData(4, 4, seed=1),
        val_metric_fn=scripted_metric([0.9, 0.8, 0.7]),
        callbacks=[center_per_epoch(centers)],
    )
    assert model.history.stopped == "interrupted" and model.history.epoch == [1, 2]
    assert torch.equal(model.center, centers[0])  # epoch 1 was the best
    assert model.is_fitted and model.predict(torch.ones(1, 3, SIZE, SIZE)).pred_score.isfinite().all()
    assert "interrupted during epoch 3 — keeping the weights of epoch 1" in capsys.readouterr().out


def test_keyboard_interrupt_without_validation_keeps_the_last_completed_epoch():
    centers = []
    model = Interrupting(max_epochs=10).fit(ToyData(12), callbacks=[center_per_epoch(centers)], verbose=False)
    assert model.history.epoch == [1, 2] and torch.equal(model.center, centers[-1])


def test_keyboard_interrupt_before_any_step_leaves_the_model_unfitted():
    model = Interrupting(max_epochs=2)
    model.interrupt_at = 1
    model.fit(ToyData(12), verbose=False)
    assert not model.is_fitted and model.history.stopped == "interrupted"


class NormRecordingSGD(torch.optim.SGD):
    """SGD that records the gradients' global norm at every step (i.e. after clipping)."""

    norms: list

    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return super().step(closure)


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_gradient_clipping_bounds_the_gradient_norm(clip):
    norms = []

    class Recording(MeanImage):
        def configure_optimizers(self):
            optimizer = NormRecordingSGD([self.center], lr=self.lr)
            optimizer.norms = norms
            return optimizer, None

    model = Recording(max_epochs=2, gradient_clip_val=clip).fit(ToyData(12), verbose=False)
    if clip:
        assert max(norms) <= clip * (1 + 1e-5)
        assert model.history.steps == len(norms)
    else:
        assert max(norms) > 10  # the same run unclipped is steeper


def test_same_seed_same_run_and_shuffling_depends_on_the_seed():
    runs = [MeanImage(max_epochs=2, seed=seed).fit(ToyData(12), verbose=False).history.step_loss for seed in (0, 0, 1)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_training_by_hand_matches_fit():
    data = ToyData(12)
    automatic = MeanImage(max_epochs=2).fit(data, verbose=False)
    model = MeanImage(max_epochs=2)
    trainer = model.trainer(verbose=False).setup()
    loader = trainer.make_loader(data)
    first = trainer.training_step(next(iter(loader)))  # one optimizer step
    assert first == automatic.history.step_loss[0]
    model = MeanImage(max_epochs=2)  # start again: two whole epochs
    trainer = model.trainer(verbose=False).setup()
    loader = trainer.make_loader(data)
    losses = [trainer.train_one_epoch(loader) for _ in range(2)]
    assert losses == pytest.approx(automatic.history.loss)
    assert torch.equal(model.center, automatic.center)


def test_tensor_and_dataloader_inputs():
    images = 1.0 + 0.1 * torch.randn(10, 3, SIZE, SIZE)
    model = MeanImage(max_epochs=3).fit(images, verbose=False)
    assert model.history.steps == 9  # 10 images, batch 4: 3 steps per epoch
    model = MeanImage(max_epochs=1).fit(DataLoader(ToyData(12), batch_size=6), verbose=False)
    assert model.history.steps == 2
    with pytest.raises(ValueError, match="configured for 8x8"):
        MeanImage(max_epochs=1).fit(torch.zeros(4, 3, 16, 16), verbose=False)


def test_a_diverging_loss_is_a_clear_error():
    model = MeanImage(max_epochs=1)
    with pytest.raises(FloatingPointError, match="learning rate"):
        model.fit(torch.full((4, 3, SIZE, SIZE), float("nan")), verbose=False)


def test_history_travels_with_the_state_dict():
    model = MeanImage(max_epochs=2).fit(ToyData(12), verbose=False)
    fresh = MeanImage()
    fresh.load_state_dict(model.state_dict())
    assert fresh.history == model.history and fresh.history.loss == model.history.loss
    assert History.from_dict(model.history.to_dict()) == model.history


def test_amp_is_cuda_only_unless_asked():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp(False, cpu) is None
    assert resolve_amp("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="CUDA"):
        resolve_amp("fp16", cpu)
    with pytest.raises(ValueError):
        resolve_amp("fp8", cpu)
    model = MeanImage(max_epochs=3, amp="bf16").fit(ToyData(12), verbose=False)  # bf16 autocast on CPU works
    assert model.history.loss[-1] < model.history.loss[0]


def test_rank_auroc_matches_the_metrics_module_with_ties():
    from adlearn.metrics import image_auroc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(size=300) + labels, 1)  # many ties
    assert rank_auroc(labels, scores) == pytest.approx(image_auroc(labels, scores), abs=1e-12)
    assert rank_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert rank_auroc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="positives and negatives"):
        rank_auroc([0, 0], [0.1, 0.2])


def test_checkpoint_holds_the_best_weights(tmp_path):
    path = tmp_path / "best.pt"
    model = MeanImage(max_epochs=4)
    model.fit(
        ToyData(12),
        ToyData(4, 4, seed=1),
        val_metric_fn=scripted_metric([0.5, 0.8, 0.6, 0.7]),
        checkpoint_path=path,
        verbose=False,
    )
    checkpoint = torch.load(path, weights_only=False)
    restored = MeanImage(**checkpoint["config"])
    restored.load_state_dict(checkpoint["state_dict"])
    images = ToyData(4, 4, seed=2)[7]["image"][None]
    assert torch.equal(restored.predict(images).anomaly_map, model.predict(images).anomaly_map)
    assert restored.history.best_epoch == 2 and restored.history.epoch == [1, 2, 3, 4]


def test_val_fraction_holds_out_normal_training_images_for_early_stopping(capsys):
    model = MeanImage(max_epochs=3, val_fraction=0.25, patience=2).fit(ToyData(12))
    history = model.history
    assert history.val_metric == "loss" and all(v is not None for v in history.val)
    assert history.steps == 3 * 3  # 9 images left: 3 batches of <= 4
    assert "all one class; validating on the loss" in capsys.readouterr().out
    train_part, val_part = hold_out(ToyData(12), 0.25, seed=0)
    assert len(train_part) == 9 and len(val_part) == 3
    assert set(train_part.indices).isdisjoint(val_part.indices)
    assert hold_out(torch.zeros(10, 3, SIZE, SIZE), 0.2)[1].shape[0] == 2
    with pytest.raises(ValueError, match="DataLoader"):
        hold_out(DataLoader(ToyData(12)), 0.2)
    with pytest.raises(ValueError, match="val_fraction"):
        MeanImage(val_fraction=1.0)


def test_synthetic_anomalies_make_held_out_normal_images_a_labelled_pixel_level_validation_set(capsys):
    from adlearn.train import SyntheticAnomalies

    normal = ToyData(6)
    val = SyntheticAnomalies(normal, seed=0)
    assert [item["label"] for item in val] == [0, 1, 0, 1, 0, 1]
    for index, item in enumerate(val):
        original, mask = normal[index]["image"], item["mask"]
        assert mask.shape == (SIZE, SIZE) and set(mask.unique().tolist()) <= {0.0, 1.0}
        changed = (item["image"] != original).any(dim=0)  # (H, W): pixels the generator touched
        if item["label"]:
            assert mask.any() and not changed[mask == 0].any()  # changes only inside the mask
        else:
            assert not mask.any() and not changed.any()  # normal images untouched
    again = SyntheticAnomalies(normal, seed=0)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(val, again))  # seeded: same set every time

    model = MeanImage(max_epochs=2, val_fraction=0.5, val_anomalies="synthetic", patience=3).fit(ToyData(8))
    assert model.history.val_metric == "pixel_auroc" and all(0 <= v <= 1 for v in model.history.val)
    with pytest.raises(ValueError, match="val_fraction"):
        MeanImage(val_anomalies="synthetic")
    with pytest.raises(ValueError, match="val_anomalies"):
        MeanImage(val_fraction=0.2, val_anomalies="dtd")
    with pytest.raises(ValueError, match="at least 2"):
        SyntheticAnomalies(ToyData(1))


def test_paired_synthetic_anomalies_keep_every_image_clean_and_add_k_different_defects():
    from adlearn.train import SyntheticAnomalies

    normal = ToyData(3)
    paired = SyntheticAnomalies(normal, seed=0, defects_per_image=2)
    assert [item["label"] for item in paired] == [0, 1, 1] * 3  # clean, defect 1, defect 2 per image
    for index in range(3):
        clean, first, second = paired[3 * index], paired[3 * index + 1], paired[3 * index + 2]
        assert torch.equal(clean["image"], normal[index]["image"]) and not clean["mask"].any()
        for defect in (first, second):  # each a defect on the same image
            changed = (defect["image"] != normal[index]["image"]).any(dim=0)
            assert defect["mask"].any() and not changed[defect["mask"] == 0].any()
        assert not torch.equal(first["mask"], second["mask"])  # two different defects
    # The default mode is unchanged by the new option: every second image, same generator stream.
    half = SyntheticAnomalies(normal, seed=0)
    assert [item["label"] for item in half] == [0, 1, 0]

    model = MeanImage(max_epochs=2, val_fraction=0.5, val_anomalies="paired", val_defects=2, patience=3)
    model.fit(ToyData(8))
    assert model.history.val_metric == "pixel_auroc" and len(model.history.val) == 2
    with pytest.raises(ValueError, match="val_fraction"):
        MeanImage(val_anomalies="paired")
    with pytest.raises(ValueError, match="val_defects"):
        MeanImage(val_fraction=0.2, val_anomalies="paired", val_defects=0)
    with pytest.raises(ValueError, match="defects_per_image"):
        SyntheticAnomalies(normal, defects_per_image=0)


# ---------------------------------------------------------------------------- precise BN
class ScaledBatchNorm(TrainedModel):
    """Toy model with a trainable batch norm after a learnable scale, and a frozen one beside it."""

    name = "scaled_batch_norm"

    training_defaults = {"max_epochs": 3, "val_metric": "loss"}

    def __init__(self, **training):
        super().__init__(image_size=SIZE, device="cpu", seed=0, batch_size=4, **training)
        self.scale = nn.Parameter(torch.ones(3, 1, 1))
        self.norm = nn.BatchNorm2d(3)
        self.frozen = nn.BatchNorm2d(3).requires_grad_(False)

    def configure_optimizers(self):
        return torch.optim.SGD([self.scale, *self.norm.parameters()], lr=0.5), None

    def training_step(self, batch, trainer=None):
        # pulls the scale up every step, so the running statistics always lag behind the weights
        return (self.norm(self.scale * batch["image"]) - 2.0).pow(2).mean() - self.scale.sum()

    def predict_step(self, images):
        return prediction_from_map(self.norm(self.scale * images).pow(2).mean(1))


def _statistics_for_current_weights(model, data, batch_size=4):
    """Independent reference: the mean over batches of each batch's channel mean / unbiased variance."""
    inputs = [model.scale.detach() * batch["image"] for batch in DataLoader(data, batch_size=batch_size)]
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
    variances = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for x in inputs]).mean(0)
    return means, variances


def test_recalibrate_batch_norm_averages_the_batch_statistics_of_the_current_weights():
    from adlearn.train import recalibrate_batch_norm, trainable_batch_norms

    model, data = ScaledBatchNorm().eval(), ToyData(12)
    with torch.no_grad():
        model.scale.fill_(3.0)
        model.norm.running_mean.fill_(-7.0)
    frozen_before = model.frozen.running_mean.clone(), model.frozen.running_var.clone()
    assert trainable_batch_norms(model) == [model.norm]
    count = recalibrate_batch_norm(
        model, DataLoader(data, batch_size=4), lambda batch: model.norm(model.scale * batch["image"])
    )
    means, variances = _statistics_for_current_weights(model, data)
    assert count == 1 and model.norm.momentum == 0.1 and not model.training
    torch.testing.assert_close(model.norm.running_mean, means)
    torch.testing.assert_close(model.norm.running_var, variances)
    assert torch.equal(model.frozen.running_mean, frozen_before[0])
    assert torch.equal(model.frozen.running_var, frozen_before[1])


def test_precise_bn_leaves_statistics_that_match_the_final_weights():
    data = ToyData(12)
    stale = ScaledBatchNorm(precise_bn=False).fit(data)
    precise = ScaledBatchNorm(precise_bn=True).fit(data)
    torch.testing.assert_close(precise.scale, stale.scale)  # same training, same weights
    means, _ = _statistics_for_current_weights(precise, data)
    torch.testing.assert_close(precise.norm.running_mean, means)
    # without it, the exponential averages lag behind the growing scale (the test above can fail)
    assert (stale.norm.running_mean < means - 0.1).all()


def test_precise_bn_runs_before_each_validation_so_the_kept_epoch_has_its_own_statistics():
    model = ScaledBatchNorm(precise_bn=True, max_epochs=3, val_fraction=0.25)
    calls = []
    model.batch_norm_forward = lambda batch: (
        calls.append(len(batch["image"])) or model.norm(model.scale * batch["image"])
    )
    model.fit(ToyData(16))
    assert sum(calls) == 3 * 12  # one pass over the 12 training images per epoch, none at the end
    train, _ = hold_out(ToyData(16), 0.25, seed=0)
    means, _ = _statistics_for_current_weights(model, train)
    torch.testing.assert_close(model.norm.running_mean, means)
