"""The one training loop every trained model uses: plain PyTorch, no Lightning.

    model = adlearn.create("stfpm", backbone="efficientnet_lite0", max_epochs=20)
    model.fit(train_data)                     # runs `Trainer(model, model.train_config).fit(...)`
    model.history.loss                        # mean training loss per epoch (learning curve)

The package, one job per module:

* `config` — `TrainingConfig`: every training option, declared and checked once.
* `loop` — `Trainer`: epochs, the optimizer step (AMP, clipping, gradient scaler), automatic or
  manual optimization, phases, the model's hooks.
* `phases` — `Phase` (a stage of training) and what ``configure_optimizers`` may return.
* `devices` — mixed precision (`resolve_amp`), batches to the device, progress bars.
* `callbacks` — best weights, early stopping, checkpoints, precise-BN, the epoch log.
* `validation` — the validation loss and AUROC (`rank_auroc`).
* `history` — `History`, the per-epoch record and its plot.
* `batch_norm` — `recalibrate_batch_norm` ("precise BN").

Validation data that never touches the test set (`hold_out`, `SyntheticAnomalies`) lives in
`adlearn.data`; it is re-exported here for convenience.

Running the same steps by hand (e.g. in a notebook, one batch at a time)::

    trainer = model.trainer()
    trainer.setup()                                 # start the seeded stream, move to device, optimizer(s)
    loader = trainer.make_loader(train_data)        # shuffled DataLoader of dict batches
    loss = trainer.training_step(next(iter(loader)))   # one batch: one optimizer step
    mean_loss = trainer.train_one_epoch(loader)     # one pass

Determinism: the run draws from its own random stream, started from ``seed`` by ``setup`` (the
caller's global generators are left alone), and the shuffling from a seeded generator: the same
seed repeats a run exactly on the same machine and device. AMP is only used
on CUDA by default (bfloat16, or fp16 with a gradient scaler); on the CPU only with ``amp="bf16"``.
Ctrl-C stops cleanly: the best weights so far (or the last completed epoch's) are put back and
``history.stopped`` is ``"interrupted"``.
"""

from adlearn.data.validation import SyntheticAnomalies, hold_out
from adlearn.train.batch_norm import recalibrate_batch_norm, trainable_batch_norms
from adlearn.train.callbacks import BestWeights, Callback, Checkpoint, EarlyStopping, EpochLog, PreciseBatchNorm
from adlearn.train.config import TrainingConfig
from adlearn.train.devices import batch_to_device, resolve_amp
from adlearn.train.history import History
from adlearn.train.loop import Trainer, fit
from adlearn.train.phases import Phase, optimizer_pairs
from adlearn.train.validation import rank_auroc

__all__ = [
    "BestWeights",
    "Callback",
    "Checkpoint",
    "EarlyStopping",
    "EpochLog",
    "History",
    "Phase",
    "PreciseBatchNorm",
    "SyntheticAnomalies",
    "Trainer",
    "TrainingConfig",
    "batch_to_device",
    "fit",
    "hold_out",
    "optimizer_pairs",
    "rank_auroc",
    "recalibrate_batch_norm",
    "resolve_amp",
    "trainable_batch_norms",
]
