"""Data modules: the digits split, image folders, and clear errors for missing data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from helpers import fake_layouts
from vitlab.data.digits import DigitsDataModule
from vitlab.data.imagefolder import ImageFolderDataModule
from vitlab.data.splits import stratified_split
from vitlab.data.tiny_imagenet import TinyImageNetDataModule
from vitlab.data.torchvision_sets import SPECS, TorchvisionDataModule
from vitlab.errors import ConfigError


def test_digits_split_is_stratified_disjoint_and_deterministic() -> None:
    labels = load_digits().target
    train, val, test = DigitsDataModule().split_indices()
    assert (len(train), len(val), len(test)) == (1257, 180, 360)
    all_idx = torch.cat([train, val, test])
    assert len(set(all_idx.tolist())) == len(labels) == 1797  # disjoint and complete
    for part, frac in ((val, 0.1), (test, 0.2)):
        counts = np.bincount(labels[part.numpy()], minlength=10)
        expected = np.bincount(labels, minlength=10) * frac
        assert np.all(np.abs(counts - expected) <= 1.0), (counts, expected)  # stratified to within one image
    again = DigitsDataModule().split_indices()
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    other = DigitsDataModule(split_seed=1).split_indices()
    assert not torch.equal(test, other[2])


def test_digits_class_subsets_and_few_shot_training_sets() -> None:
    labels = torch.as_tensor(load_digits().target)
    full_test = DigitsDataModule().split_indices()[2]
    upper = DigitsDataModule(classes=[5, 6, 7, 8, 9], train_per_class=20, augment="none")
    train, val, test = upper.split_indices()
    assert upper.num_classes == 5 and len(train) == 100
    assert torch.equal(torch.bincount(labels[train])[5:], torch.full((5,), 20))
    assert torch.equal(test, full_test[labels[full_test] >= 5])  # the same test images as the 10-class split
    assert set(labels[val].tolist()) == {5, 6, 7, 8, 9}
    upper.setup()
    _, y = upper.test_set[0]
    assert labels[test[0]] - 5 == y  # relabelled 5..9 -> 0..4
    assert {int(upper.train_set[i][1]) for i in range(len(upper.train_set))} == set(range(5))
    assert torch.equal(train, DigitsDataModule(classes=[5, 6, 7, 8, 9], train_per_class=20).split_indices()[0])
    for kwargs, key in (({"classes": [1, 1]}, "data.classes"), ({"train_per_class": 0}, "data.train_per_class")):
        with pytest.raises(ConfigError, match=key):
            DigitsDataModule(**kwargs)
    with pytest.raises(ConfigError, match="only"):
        DigitsDataModule(classes=[0], train_per_class=1000).split_indices()


def test_digits_images_are_resized_three_channel_and_normalised() -> None:
    dm = DigitsDataModule(img_size=24, augment="none")
    dm.setup()
    x, _ = dm.test_set[0]
    assert x.shape == (3, 24, 24) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_stratified_split_fractions() -> None:
    labels = np.repeat(np.arange(4), 50)
    train, val, test = stratified_split(labels, [0.1, 0.2], seed=3)
    assert (len(train), len(val), len(test)) == (140, 20, 40)
    assert np.all(np.bincount(labels[test]) == 10)


def test_global_batch_must_divide_over_processes() -> None:
    class FakeTrainer:
        world_size = 3

    dm = DigitsDataModule(batch_size=64)
    dm.trainer = FakeTrainer()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="divisible"):
        _ = dm.per_device_batch_size


@pytest.mark.parametrize("name", sorted(SPECS))
def test_missing_torchvision_dataset_says_how_to_get_it(tmp_path, name: str) -> None:
    dm = TorchvisionDataModule(name=name, root=str(tmp_path), img_size=32)
    with pytest.raises(ConfigError, match=r"data.download=true") as info:
        dm.setup()
    assert str(tmp_path) in str(info.value)


def test_image_folder_derives_classes_and_holds_out_val(tmp_path) -> None:
    fake_layouts.image_folder(tmp_path, per_class=10)
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=16, num_workers=0, val_fraction=0.2)
    assert dm.num_classes == 3
    assert dm.split_sizes() == {"train": 24, "val": 6, "test": 30}
    x, _ = dm.val_set[0]
    assert x.shape == (3, 16, 16)


def test_image_folder_missing_split_shows_the_layout(tmp_path) -> None:
    fake_layouts.image_folder(tmp_path, splits=("train",))
    with pytest.raises(ConfigError, match=r"no 'test' folder.*<root>/train/<class>"):
        ImageFolderDataModule(root=str(tmp_path))


def test_tiny_imagenet_reads_the_distributed_layout(tmp_path) -> None:
    fake_layouts.tiny_imagenet(tmp_path)
    dm = TinyImageNetDataModule(root=str(tmp_path), num_workers=0, val_fraction=0.2, augment="none")
    assert dm.num_classes == 3
    assert dm.split_sizes() == {"train": 24, "val": 6, "test": 6}
    labels = sorted(dm.test_set[i][1] for i in range(6))
    assert labels == [0, 0, 1, 1, 2, 2]  # from val_annotations.txt, in wnids.txt order
    x, _ = dm.train_set[0]
    assert x.shape == (3, 64, 64)


def test_tiny_imagenet_missing_parts_show_the_layout(tmp_path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(ConfigError, match=r"missing wnids.txt, val/images, val/val_annotations.txt.*unzip"):
        TinyImageNetDataModule(root=str(tmp_path))


def test_augment_none_trains_on_the_evaluation_transform(tmp_path) -> None:
    fake_layouts.image_folder(tmp_path, per_class=10)
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=16, num_workers=0, val_fraction=0.2, augment="none")
    dm.setup()
    a, _ = dm.train_set[0]
    b, _ = dm.train_set[0]
    assert torch.equal(a, b)  # deterministic: no random crop or flip


def test_randaugment_posterize_at_full_magnitude_gives_a_black_image_not_a_crash() -> None:
    """`inc1` policies keep 0 bits at magnitude 10 (reached by `mstd` noise); Pillow >= 13 refuses 0 bits."""
    from timm.data.auto_augment import NAME_TO_OP, rand_augment_transform

    from vitlab.data.transforms import build_transform

    build_transform(8, True, (0.5,) * 3, (0.5,) * 3, {"randaugment": "rand-m10-n1-inc1"})  # installs the fix
    img = Image.new("RGB", (8, 8), (200, 120, 40))
    assert np.asarray(NAME_TO_OP["PosterizeIncreasing"](img, 0)).max() == 0
    assert np.asarray(NAME_TO_OP["Posterize"](img, 4)).tolist() == np.asarray(img).__and__(0xF0).tolist()
    transform = rand_augment_transform("rand-m10-n1-inc1", {}, transforms=["PosterizeIncreasing"])
    assert all(transform(img).size == (8, 8) for _ in range(20))
