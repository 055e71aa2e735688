"""Shared fixtures. Tests run offline: the backbone is efficientnet_lite0 with packaged weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE_BACKBONE = "efficientnet_lite0"


RECIPES_ENV = "ADLEARN_RECIPES"


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.recipe`` tests (a model's full training recipe on real data: minutes of CPU each)
    run only with ``ADLEARN_RECIPES=1`` (``make test-recipes``) or when ``-m`` names them; ``make test``
    (CI) runs the cheaper real-data checks beside them, so it stays within its time budget."""
    if os.environ.get(RECIPES_ENV) == "1" or "recipe" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(
        reason=f"a full training recipe (minutes of CPU): run with {RECIPES_ENV}=1 or make test-recipes"
    )
    for item in items:
        if "recipe" in item.keywords:
            item.add_marker(skip)


def mvtec_root() -> Path | None:
    root = os.environ.get("ADLEARN_MVTEC_ROOT")
    if not root:
        candidate = REPO.parent / "shared" / "data" / "mvtec_ad"
        root = str(candidate) if candidate.is_dir() else None
    return Path(root) if root and (Path(root) / "bottle").is_dir() else None


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of training tests: on 2 cores shared with other jobs, OpenMP's
    2 threads mostly wait on each other (training steps measured 10x slower); restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def mvtec_bottle_root() -> Path:
    root = mvtec_root()
    if root is None:
        pytest.skip("real MVTec AD bottle not found: set ADLEARN_MVTEC_ROOT to a folder holding bottle/")
    return root


@pytest.fixture
def bottle_fit(mvtec_bottle_root):
    """``fit(name, n_train=60, **options) -> results``: the model's ``cpu`` preset (``preset=``; seed 0, CPU) fitted on
    ``n_train`` evenly spaced real bottle training images — all of them with ``n_train=None`` — and scored on
    the whole test split. 60 images: the CI-sized real-data check of a trained model; all: its full recipe
    (a ``recipe`` test). ``return_model=True``: ``(model, results)``."""
    from torch.utils.data import Subset

    from adlearn.data import MVTecDataset
    from adlearn.evaluate import fit_and_evaluate
    from adlearn.models import create

    def fit(name: str, n_train: int | None = 60, preset="cpu", seed=0, return_model: bool = False, **options):
        model = create(name, preset=preset, device="cpu", seed=seed, **options)
        train = MVTecDataset(mvtec_bottle_root, "bottle", "train", transform=model.transform)
        if n_train is not None:
            train = Subset(train, [int(i * (len(train) / n_train)) for i in range(n_train)])
        test = MVTecDataset(mvtec_bottle_root, "bottle", "test", transform=model.transform)
        results = fit_and_evaluate(model, train, test)
        return (model, results) if return_model else results

    return fit


@pytest.fixture(scope="session")
def small_synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic MVTec-layout dataset (64 px, few images) shared by the model tests."""
    from adlearn.data import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(
        root, categories="all", image_size=64, seed=0, n_train=12, n_test_good=4, n_test_defect=8
    )
    return root


@pytest.fixture(scope="session")
def synthetic_split(small_synthetic_root):
    """``load(transform, split) -> (dataset, images (N, 3, H, W))`` for the first small synthetic category."""
    import torch

    from adlearn.data import SYNTHETIC_CATEGORIES, MVTecDataset

    def load(transform, split: str):
        dataset = MVTecDataset(small_synthetic_root, SYNTHETIC_CATEGORIES[0], split, transform=transform)
        return dataset, torch.stack([dataset[i]["image"] for i in range(len(dataset))])

    return load


@pytest.fixture(scope="session")
def datasets_64(synthetic_split):
    """(train, test) Datasets of the first small synthetic category at 64 px: the trained models' tests."""
    from adlearn.data import ImageTransform

    transform = ImageTransform(image_size=64)
    return synthetic_split(transform, "train")[0], synthetic_split(transform, "test")[0]


@pytest.fixture(scope="module")
def tiny_videos():
    """AI-VAD's tests: small synthetic surveillance clips (training, test): 3 videos of 10 and 3 of 14 frames at 64 x 80."""
    from adlearn.data import ClipDataset, synthetic_surveillance

    size = (64, 80)
    train = ClipDataset(synthetic_surveillance("train", n_videos=3, n_frames=10, size=size))
    test = ClipDataset(synthetic_surveillance("test", n_videos=3, n_frames=14, size=size))
    return train, test
