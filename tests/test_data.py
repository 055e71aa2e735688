"""The data layer against independent facts: hand-computed normalization, pixel-exact synthetic
masks, Perlin's zeros on its lattice, the blend formula, real MVTec counts, and clear errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from adlearn.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SYNTHETIC_CATEGORIES,
    DataError,
    FolderDataset,
    ImageTransform,
    MVTecDataset,
    PerlinAnomalyGenerator,
    generate_synthetic_dataset,
    make_synthetic_dataset,
    random_2d_perlin,
    synth_command,
    synthetic_root,
)
from adlearn.data import synthetic as synth

SIZE = 64  # small images keep the whole file fast
COUNTS = {"n_train": 5, "n_test_good": 3, "n_test_defect": 7}


def save_rgb(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def random_rgb(rng: np.random.Generator, size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_data")
    return generate_synthetic_dataset(root, "all", image_size=SIZE, seed=3, **COUNTS)


def digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# =========================================================================== transforms
def test_transform_shapes_for_int_pair_and_crop():
    image = Image.fromarray(random_rgb(np.random.default_rng(0), 40))
    assert ImageTransform(32)(image).shape == (3, 32, 32)
    assert ImageTransform((24, 40))(image).shape == (3, 24, 40)
    cropped = ImageTransform(32, center_crop=28)
    assert cropped(image).shape == (3, 28, 28)
    assert cropped.output_size == (28, 28)
    assert cropped.mask(Image.new("L", (40, 40))).shape == (28, 28)


def test_normalization_matches_hand_computed_values():
    image = Image.new("RGB", (10, 10), (255, 0, 128))
    out = ImageTransform(8)(image)
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    for channel, value in enumerate(expected):
        assert torch.allclose(out[channel], torch.full((8, 8), value), atol=1e-5)
    raw = ImageTransform(8, normalize=False)(image)
    assert torch.allclose(raw[:, 0, 0], torch.tensor([1.0, 0.0, 128 / 255]), atol=1e-6)
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_denormalize_inverts_normalization():
    rgb = random_rgb(np.random.default_rng(1), 16)
    transform = ImageTransform(16)
    back = ImageTransform.denormalize(transform(Image.fromarray(rgb)))
    assert torch.allclose(back, torch.from_numpy(rgb).permute(2, 0, 1) / 255.0, atol=1e-5)
    batch = torch.stack([transform(Image.fromarray(rgb))] * 2)  # (B, 3, H, W) works too
    assert transform.denormalize(batch).shape == (2, 3, 16, 16)


def test_mask_is_resized_nearest_and_binarized():
    mask = np.array([[0, 3], [255, 0]], dtype=np.uint8)  # a defect index and a 0/255 value
    out = ImageTransform(4).mask(Image.fromarray(mask))
    expected = np.kron(np.array([[0, 1], [1, 0]]), np.ones((2, 2)))  # each pixel copied 2x2
    assert torch.equal(out, torch.from_numpy(expected).float())
    soft = Image.fromarray(np.linspace(0, 255, 64, dtype=np.uint8).reshape(8, 8))
    assert set(torch.unique(ImageTransform(5).mask(soft)).tolist()) <= {0.0, 1.0}


def test_crop_is_the_same_for_image_and_mask():
    canvas = np.zeros((40, 40, 3), np.uint8)
    canvas[10:14, 30:36] = 255
    mask = (canvas[..., 0] > 0).astype(np.uint8) * 255
    transform = ImageTransform(40, center_crop=(30, 34), normalize=False)
    image_out = transform(Image.fromarray(canvas))
    mask_out = transform.mask(Image.fromarray(mask))
    assert torch.equal(image_out[0] > 0.5, mask_out > 0.5)
    assert mask_out.sum() == 24


def test_tensor_input_agrees_with_pil_input():
    rgb = random_rgb(np.random.default_rng(2), 16)
    from_pil = ImageTransform(16, normalize=False)(Image.fromarray(rgb))
    from_tensor = ImageTransform(16, normalize=False)(torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.allclose(from_pil, from_tensor, atol=1e-6)


def test_transform_rejects_bad_sizes():
    with pytest.raises(DataError, match="does not fit"):
        ImageTransform(32, center_crop=40)
    with pytest.raises(DataError, match="image_size"):
        ImageTransform("big")


# =========================================================================== Perlin noise
@pytest.mark.parametrize("shape,res", [((64, 64), (4, 4)), ((50, 70), (3, 8)), ((33, 17), 5), ((8, 8), (1, 1))])
def test_perlin_shape_and_range(shape, res):
    noise = random_2d_perlin(shape, res, rng=0)
    assert noise.shape == shape and noise.dtype == np.float32
    assert noise.min() >= -1.0 and noise.max() <= 1.0


def test_perlin_uses_its_range_and_is_smooth():
    noise = random_2d_perlin((128, 128), (2, 2), rng=0)
    assert noise.max() - noise.min() > 0.5  # not a flat field
    assert np.abs(np.diff(noise, axis=0)).max() < 0.1  # neighbouring pixels are close
    fine = random_2d_perlin((128, 128), (32, 32), rng=0)
    assert np.abs(np.diff(fine, axis=1)).mean() > np.abs(np.diff(noise, axis=1)).mean()


def test_perlin_is_zero_on_its_lattice():
    # at a lattice point the offset vector to its own corner is 0, so every dot product is 0
    noise = random_2d_perlin((64, 64), (4, 4), rng=5)
    assert np.allclose(noise[::16, ::16], 0.0, atol=1e-6)
    assert np.abs(noise[8::16, 8::16]).max() > 0  # but not at the cell centres


def test_perlin_seed_and_fade():
    assert np.array_equal(random_2d_perlin(32, 4, rng=1), random_2d_perlin(32, 4, rng=1))
    assert not np.array_equal(random_2d_perlin(32, 4, rng=1), random_2d_perlin(32, 4, rng=2))
    linear = random_2d_perlin(32, 4, fade=lambda t: t, rng=1)
    assert linear.shape == (32, 32) and np.abs(linear).max() <= 1.0
    with pytest.raises(DataError):
        random_2d_perlin(32, 0)


def test_fast_perlin_equals_the_general_evaluator():
    from adlearn.data.perlin import perlin_at, random_gradients

    noise = random_2d_perlin((40, 48), (5, 6), rng=7)
    gradients = random_gradients((5, 6), np.random.default_rng(7))
    y, x = np.meshgrid(np.arange(40) * 5 / 40, np.arange(48) * 6 / 48, indexing="ij")
    assert np.allclose(noise, perlin_at(gradients, y, x), atol=1e-5)


# =========================================================================== anomaly generator
def test_generator_shapes_and_untouched_outside_the_mask():
    batch = torch.rand(4, 3, 32, 32)
    augmented, masks = PerlinAnomalyGenerator(p_anomalous=1.0, seed=0)(batch)
    assert augmented.shape == batch.shape and masks.shape == (4, 1, 32, 32)
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    assert (masks.flatten(1).sum(1) > 0).all()  # every picked image really has an anomaly
    outside = masks.expand_as(batch) == 0
    assert torch.equal(augmented[outside], batch[outside])


def test_generator_p_zero_changes_nothing():
    batch = torch.rand(3, 3, 16, 16)
    augmented, masks = PerlinAnomalyGenerator(p_anomalous=0.0, seed=0)(batch)
    assert torch.equal(augmented, batch) and masks.sum() == 0


def test_generator_blend_formula_with_a_texture_folder(tmp_path):
    # a one-colour texture stays one colour under every augmentation, so inside the mask
    # (aug - (1 - beta) * x) / beta must be the same colour at every pixel
    save_rgb(tmp_path / "tex" / "red.png", np.tile([[[200, 30, 90]]], (8, 8, 1)))
    beta = 0.4
    generator = PerlinAnomalyGenerator(tmp_path / "tex", p_anomalous=1.0, beta=beta, seed=1)
    batch = torch.rand(2, 3, 32, 32)
    augmented, masks = generator(batch, normalized=False)
    for i in range(2):
        inside = masks[i, 0] > 0
        texture = (augmented[i][:, inside] - (1 - beta) * batch[i][:, inside]) / beta  # (3, N)
        assert torch.allclose(texture, texture[:, :1].expand_as(texture), atol=1e-5)
        assert texture.min() >= -1e-5 and texture.max() <= 1 + 1e-5


def test_generator_keeps_normalized_batches_normalized(tmp_path):
    save_rgb(tmp_path / "tex" / "grey.png", np.full((8, 8, 3), 128))
    generator = PerlinAnomalyGenerator(tmp_path / "tex", p_anomalous=1.0, beta=1.0, seed=2)
    images = torch.rand(2, 3, 24, 24)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    augmented, masks = generator((images - mean) / std)  # auto-detected as normalized
    back = augmented * std + mean  # beta=1: inside the mask we see the texture itself, in [0, 1]
    inside = masks[:, 0] > 0
    values = back.permute(0, 2, 3, 1)[inside]  # (N, 3)
    assert values.min() >= -1e-5 and values.max() <= 1 + 1e-5


def test_generator_is_seeded_and_checks_input(tmp_path):
    batch = torch.rand(2, 3, 16, 16)
    a = PerlinAnomalyGenerator(seed=4, p_anomalous=1.0)(batch)
    b = PerlinAnomalyGenerator(seed=4, p_anomalous=1.0)(batch)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(DataError, match=r"\(B, 3, H, W\)"):
        PerlinAnomalyGenerator()(torch.rand(3, 16, 16))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        PerlinAnomalyGenerator(tmp_path / "empty")
    with pytest.raises(DataError, match="beta"):
        PerlinAnomalyGenerator(beta=(0.8, 0.2))


def test_make_synthetic_dataset_labels_masks_and_untouched_pixels(tmp_path):
    rng = np.random.default_rng(0)
    sources = [save_rgb(tmp_path / "normal" / f"{i}.png", random_rgb(rng)) for i in range(6)]
    dataset = make_synthetic_dataset(
        sources,
        tmp_path / "images",
        tmp_path / "masks",
        anomalous_ratio=0.5,
        seed=0,
        transform=ImageTransform(32, normalize=False),
    )
    assert dataset.labels == [0, 0, 0, 1, 1, 1]
    normal_paths = {s.image_path for s in dataset.samples if s.label == 0}
    assert normal_paths <= set(sources)  # normal images are kept where they are
    originals = [np.asarray(Image.open(p)) for p in sources]
    for sample in dataset.samples[3:]:
        mask = np.asarray(Image.open(sample.mask_path))
        assert set(np.unique(mask)) == {0, 255}
        image = np.asarray(Image.open(sample.image_path))
        outside = mask == 0  # outside the mask the copy equals one of the unused sources
        assert any(np.array_equal(image[outside], o[outside]) for o in originals)
        assert sample.defect_type == "synthetic"
    item = dataset[5]
    assert item["label"] == 1 and item["mask"].sum() > 0


def test_make_synthetic_dataset_rejects_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    path = save_rgb(tmp_path / "a.png", random_rgb(rng))
    from adlearn.data import Sample

    with pytest.raises(DataError, match="normal images only"):
        make_synthetic_dataset([Sample(path, 1, "crack")], tmp_path / "i", tmp_path / "m")
    with pytest.raises(DataError, match="anomalous_ratio"):
        make_synthetic_dataset([path], tmp_path / "i", tmp_path / "m", anomalous_ratio=1.5)


# =========================================================================== synthetic dataset
def test_synthetic_layout_and_counts(synthetic_dir):
    assert set(SYNTHETIC_CATEGORIES) == {"weave", "marble", "pill", "ring"}
    for category in SYNTHETIC_CATEGORIES:
        folder = synthetic_dir / category
        assert len(list((folder / "train" / "good").glob("*.png"))) == COUNTS["n_train"]
        assert len(list((folder / "test" / "good").glob("*.png"))) == COUNTS["n_test_good"]
        defects = synth.DEFECT_TYPES[category]
        assert 2 <= len(defects) <= 4
        counts = {d: len(list((folder / "test" / d).glob("*.png"))) for d in defects}
        assert sum(counts.values()) == COUNTS["n_test_defect"]
        assert max(counts.values()) - min(counts.values()) <= 1  # spread evenly
        for defect in defects:
            stems = sorted(p.stem for p in (folder / "test" / defect).glob("*.png"))
            masks = sorted(p.stem for p in (folder / "ground_truth" / defect).glob("*.png"))
            assert masks == [s + "_mask" for s in stems]


def test_synthetic_masks_are_exactly_the_changed_pixels(synthetic_dir):
    for category in SYNTHETIC_CATEGORIES:
        for defect in synth.DEFECT_TYPES[category]:
            for path in sorted((synthetic_dir / category / "test" / defect).glob("*.png")):
                image = np.asarray(Image.open(path))
                mask = np.asarray(
                    Image.open(synthetic_dir / category / "ground_truth" / defect / f"{path.stem}_mask.png")
                )
                drawn = synth.render_sample(category, int(path.stem), "test", defect, SIZE, seed=3)
                assert np.array_equal(image, drawn.image)
                changed = np.any(image != drawn.clean, axis=-1)  # vs. the defect-free drawing
                assert np.array_equal(mask > 0, changed), (category, defect, path.name)
                assert set(np.unique(mask)) == {0, 255}
                assert 0 < changed.mean() < 0.15  # a defect, not a different picture


def test_object_defects_sit_on_the_object():
    for category in ("pill", "ring"):
        for defect in synth.DEFECT_TYPES[category]:
            for index in range(3):
                drawn = synth.render_sample(category, index, "test", defect, SIZE, seed=0)
                scene_seed = synth.sample_seed(0, category, "test", defect, index).spawn(3)[0]
                scene = synth.SCENES[category](synth.make_canvas(SIZE), np.random.default_rng(scene_seed))
                assert (scene.support[drawn.mask] > 0).all(), (category, defect, index)


def test_synthetic_good_images_are_the_clean_drawings(synthetic_dir):
    for category in ("weave", "ring"):
        for split in ("train", "test"):
            path = synthetic_dir / category / split / "good" / "001.png"
            drawn = synth.render_sample(category, 1, split, "good", SIZE, seed=3)
            assert np.array_equal(np.asarray(Image.open(path)), drawn.image)
            assert not drawn.mask.any()


def test_normal_images_vary(synthetic_dir):
    for category in SYNTHETIC_CATEGORIES:
        images = [
            np.asarray(Image.open(p)).astype(float)
            for p in sorted((synthetic_dir / category / "train" / "good").glob("*.png"))
        ]
        differences = [np.abs(images[0] - other).mean() for other in images[1:]]
        assert min(differences) > 2.0, category  # not copies of one picture plus noise


def test_synthetic_generation_is_byte_identical_and_stable(tmp_path):
    first = generate_synthetic_dataset(
        tmp_path / "a", "ring", image_size=48, seed=1, n_train=3, n_test_good=1, n_test_defect=3
    )
    second = generate_synthetic_dataset(
        tmp_path / "b", ["ring"], image_size=48, seed=1, n_train=4, n_test_good=1, n_test_defect=3
    )
    other = generate_synthetic_dataset(
        tmp_path / "c", "ring", image_size=48, seed=2, n_train=3, n_test_good=1, n_test_defect=3
    )
    a, b, c = digest_tree(first), digest_tree(second), digest_tree(other)
    png = [k for k in a if k.endswith(".png")]
    assert all(a[k] == b[k] for k in png)  # asking for more images keeps the first ones
    assert len(b) == len(a) + 1
    assert any(a[k] != c[k] for k in png)  # another seed, other pictures


def test_synthetic_dataset_loads_with_mvtec_dataset(synthetic_dir):
    transform = ImageTransform(SIZE)
    test = MVTecDataset(synthetic_dir, "pill", split="test", transform=transform)
    assert len(test) == COUNTS["n_test_good"] + COUNTS["n_test_defect"]
    batch = next(iter(DataLoader(test, batch_size=4)))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["mask"].shape == (4, SIZE, SIZE)
    for item in (test[i] for i in range(len(test))):
        assert item["label"] == int(item["defect_type"] != "good")
        assert (item["mask"].sum() > 0) == bool(item["label"])


def test_generate_refuses_to_overwrite_foreign_folders(tmp_path):
    save_rgb(tmp_path / "ring" / "mine.png", np.zeros((4, 4, 3)))
    with pytest.raises(DataError, match="not made by generate_synthetic_dataset"):
        generate_synthetic_dataset(tmp_path, "ring", image_size=32, n_train=1, n_test_good=0, n_test_defect=0)
    with pytest.raises(DataError, match="weave"):
        generate_synthetic_dataset(tmp_path, "nope", image_size=32)
    with pytest.raises(DataError, match="at least 32"):
        generate_synthetic_dataset(tmp_path, "ring", image_size=16)


def test_synthetic_root_caches_and_regenerates_half_written(tmp_path, monkeypatch):
    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path / "cache"))
    small = dict(image_size=32, seed=0, n_train=1, n_test_good=1, n_test_defect=0)
    root = synthetic_root(**small)
    assert (root / synth.COMPLETE_NAME).is_file() and root.parent == tmp_path / "cache"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(SYNTHETIC_CATEGORIES)
    before = digest_tree(root)

    def must_not_run(*args, **kwargs):
        raise AssertionError("regenerated a complete cache")

    monkeypatch.setattr(synth, "generate_synthetic_dataset", must_not_run)
    assert synthetic_root(**small) == root
    monkeypatch.undo()
    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path / "cache"))
    (root / synth.COMPLETE_NAME).unlink()  # as if a run died before finishing
    (root / "weave" / "train" / "good" / "000.png").unlink()
    assert synthetic_root(**small) == root
    assert digest_tree(root) == before
    assert not list((tmp_path / "cache").glob("*.tmp-*"))  # no building folders left behind


def test_synthetic_root_removes_builds_of_dead_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path))
    small = dict(image_size=32, seed=1, n_train=1, n_test_good=0, n_test_defect=0)
    key = f"synthetic-v{synth.GENERATOR_VERSION}-size32-seed1-train1-good0-defect0"
    dead = tmp_path / f"{key}.tmp-999999999-abcd1234"  # no process has this id
    (dead / "weave").mkdir(parents=True)
    assert synthetic_root(**small).name == key
    assert not dead.exists()


def test_synth_command_prints_what_it_wrote(tmp_path, capsys):
    synth_command(tmp_path, category="marble", image_size=32, seed=0, n_train=2, n_test_good=1, n_test_defect=3)
    out = capsys.readouterr().out
    assert "marble" in out and "2 train" in out and "crack 1" in out and str(tmp_path) in out
    assert len(list((tmp_path / "marble" / "train" / "good").glob("*.png"))) == 2


# =========================================================================== MVTecDataset errors
def copy_category(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_mvtec_missing_root_category_and_split(tmp_path, synthetic_dir):
    with pytest.raises(DataError, match="does not exist"):
        MVTecDataset(tmp_path / "nowhere", "ring")
    with pytest.raises(DataError, match=r"'bottle' not found.*marble.*pill.*ring.*weave"):
        MVTecDataset(synthetic_dir, "bottle")
    with pytest.raises(DataError, match="unknown split 'val'"):
        MVTecDataset(synthetic_dir, "ring", split="val")


def test_mvtec_empty_folder_and_stray_files(tmp_path, synthetic_dir):
    root = tmp_path / "root"
    folder = copy_category(synthetic_dir / "ring", root / "ring")
    for path in (folder / "train" / "good").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="contains no images"):
        MVTecDataset(root, "ring", "train")
    (folder / "train" / "good" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt"):
        MVTecDataset(root, "ring", "train")


def test_mvtec_corrupt_image_names_the_file(tmp_path, synthetic_dir):
    root = tmp_path / "root"
    folder = copy_category(synthetic_dir / "weave", root / "weave")
    broken = folder / "train" / "good" / "001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    dataset = MVTecDataset(root, "weave", "train", transform=ImageTransform(SIZE))
    assert dataset[0]["image"].shape == (3, SIZE, SIZE)
    with pytest.raises(DataError, match=r"cannot read image file .*001\.png"):
        dataset[1]


def test_mvtec_missing_mask_is_an_error(tmp_path, synthetic_dir):
    root = tmp_path / "root"
    folder = copy_category(synthetic_dir / "marble", root / "marble")
    (folder / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"no mask.*crack/000\.png.*000_mask\.png"):
        MVTecDataset(root, "marble", "test")


def test_mask_of_another_size_is_an_error(tmp_path, synthetic_dir):
    root = tmp_path / "root"
    folder = copy_category(synthetic_dir / "pill", root / "pill")
    Image.new("L", (10, 10)).save(folder / "ground_truth" / "spot" / "000_mask.png")
    dataset = MVTecDataset(root, "pill", "test")
    index = [s.image_path.name for s in dataset.samples if s.defect_type == "spot"].index("000.png")
    first_spot = [s.defect_type for s in dataset.samples].index("spot") + index
    with pytest.raises(DataError, match="10x10 but image"):
        dataset[first_spot]


def test_mvtec_order_is_sorted_and_deterministic(synthetic_dir):
    a = MVTecDataset(synthetic_dir, "ring", "test")
    b = MVTecDataset(synthetic_dir, "ring", "test")
    assert [s.image_path for s in a.samples] == [s.image_path for s in b.samples]
    keys = [(s.defect_type, s.image_path.name) for s in a.samples]
    assert keys == sorted(keys)


# =========================================================================== FolderDataset
@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    for i in range(10):
        save_rgb(tmp_path / "good" / f"{i:02d}.jpg", random_rgb(rng))
    for i, mask_name in enumerate(["a_mask.png", "b.png"]):
        save_rgb(tmp_path / "scratch" / f"{'ab'[i]}.png", random_rgb(rng))
        mask = np.zeros((32, 32), np.uint8)
        mask[4:9, 4:12] = 255
        Image.fromarray(mask).save(save_rgb(tmp_path / "masks" / mask_name, np.zeros((1, 1, 3))))
    return {"normal": tmp_path / "good", "abnormal": tmp_path / "scratch", "masks": tmp_path / "masks"}


def test_folder_dataset_splits_and_masks(folders):
    kwargs = dict(
        normal_dir=folders["normal"],
        abnormal_dir=folders["abnormal"],
        mask_dir=folders["masks"],
        transform=ImageTransform(16),
        test_split_ratio=0.2,
    )
    train = FolderDataset(split="train", **kwargs)
    test = FolderDataset(split="test", **kwargs)
    train_paths = {s.image_path for s in train.samples}
    test_normal = {s.image_path for s in test.samples if s.label == 0}
    assert len(train) == 8 and len(test_normal) == 2 and not train_paths & test_normal
    assert train_paths | test_normal == set(folders["normal"].iterdir())
    anomalous = [s for s in test.samples if s.label == 1]
    assert [s.mask_path.name for s in anomalous] == ["a_mask.png", "b.png"]  # both namings
    assert all(s.defect_type == "scratch" for s in anomalous)
    item = test[len(test) - 1]
    assert item["mask"].shape == (16, 16) and item["mask"].sum() > 0 and test.has_masks


def test_folder_dataset_errors(folders, tmp_path):
    (folders["masks"] / "b.png").unlink()
    with pytest.raises(DataError, match=r"no mask.*b\.png"):
        FolderDataset(folders["normal"], folders["abnormal"], folders["masks"], split="test")
    no_masks = FolderDataset(folders["normal"], folders["abnormal"], split="test")
    assert not no_masks.has_masks and no_masks[len(no_masks) - 1]["mask"].sum() == 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        FolderDataset(tmp_path / "empty")
    with pytest.raises(DataError, match=r"subfolders \[.*'good'"):
        FolderDataset(tmp_path)  # pointing at the parent folder by mistake


# =========================================================================== real MVTec bottle
@pytest.fixture
def real_mvtec_root() -> Path:
    root = os.environ.get("ADLEARN_MVTEC_ROOT")
    if not root or not (Path(root) / "bottle").is_dir():
        pytest.skip(
            "real MVTec AD not available: set ADLEARN_MVTEC_ROOT to a folder holding "
            "bottle/ (e.g. after python data_scripts/download_mvtec.py)"
        )
    return Path(root)


@pytest.mark.mvtec
def test_real_mvtec_bottle_counts_and_masks(real_mvtec_root):
    from adlearn.data.datasets import load_mask

    train = MVTecDataset(real_mvtec_root, "bottle", "train")
    assert len(train) == 209 and set(train.labels) == {0}
    test = MVTecDataset(real_mvtec_root, "bottle", "test", transform=ImageTransform(256))
    assert test.counts()["good"] == 20 and sum(test.labels) == len(test) - 20
    for sample in test.samples:  # masks only: decoding every image would add nothing here
        if sample.label == 1:
            mask = test.transform.mask(load_mask(sample.mask_path))
            assert set(torch.unique(mask).tolist()) == {0.0, 1.0}, sample.image_path
        else:
            assert sample.mask_path is None and sample.defect_type == "good"
    for index in (0, len(test) - 1):  # and the items themselves, at both ends of the list
        item = test[index]
        assert item["image"].shape == (3, 256, 256)
        assert (item["mask"].sum() > 0) == bool(item["label"])


# ----------------------------------------------------------------------------- digits (a real one-class problem)
def test_digit_images_are_sklearn_digits_upsampled_and_normalized():
    from sklearn.datasets import load_digits

    from adlearn.data import IMAGENET_MEAN, IMAGENET_STD, digit_images

    images, labels = digit_images(size=8)  # no resampling at the native size
    bunch = load_digits()
    assert images.shape == (1797, 3, 8, 8) and labels.tolist() == bunch.target.tolist()
    for channel in range(3):  # undo the normalization by hand
        grey = images[:, channel] * IMAGENET_STD[channel] + IMAGENET_MEAN[channel]
        np.testing.assert_allclose(grey.numpy(), bunch.images / 16.0, atol=1e-5)
    assert digit_images(size=32)[0].shape == (1797, 3, 32, 32)
    with pytest.raises(ValueError, match="at least"):
        digit_images(size=4)


def test_one_class_split_trains_on_half_of_one_digit_and_tests_on_the_rest():
    from adlearn.data import one_class_split

    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    split = one_class_split(labels, digit=1, n_others=4, seed=3)
    assert len(split.train) == 3 and (labels[split.train] == 1).all()
    assert len(split.test) == 4 + 4 and set(split.train.tolist()).isdisjoint(split.test.tolist())
    assert split.is_anomalous.tolist() == (labels[split.test] != 1).int().tolist() == [0] * 4 + [1] * 4
    again = one_class_split(labels, digit=1, n_others=4, seed=3)
    assert torch.equal(again.train, split.train) and torch.equal(again.test, split.test)
    assert len(one_class_split(labels, digit=1, n_others=None).test) == 4 + 15
    with pytest.raises(ValueError, match="no image has the label 7"):
        one_class_split(labels, digit=7)
