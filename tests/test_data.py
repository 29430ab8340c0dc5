"""The CIFAR-10 loader, the fixed split and on-device augmentation."""

from __future__ import annotations

import urllib.error
import warnings
from pathlib import Path

import pytest
import torch

from cifar_tune import data as data_mod
from cifar_tune.config import DataConfig
from cifar_tune.data import ChecksumWarning, DataError, augment, load_cifar10, load_data, normalize, split_train_val

from cifar_files import md5s, write_cifar


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_cifar(tmp_path, per_batch=20, n_test=30)


def test_files_matching_official_checksums_load_silently(folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(data_mod, "OFFICIAL_MD5", md5s(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        files = load_cifar10(folder.parent)
    assert files.checksums_ok
    assert files.train_x.shape == (100, 3, 32, 32) and files.train_x.dtype == torch.uint8
    assert files.train_y.shape == (100,) and files.test_x.shape == (30, 3, 32, 32) and len(files.test_y) == 30
    assert files.classes[0] == "airplane" and files.classes[6] == "frog"


def test_mismatched_copy_loads_with_one_warning(folder: Path) -> None:
    with pytest.warns(ChecksumWarning) as record:
        ok = load_cifar10(folder).checksums_ok  # the batch folder itself is accepted as root too
    assert not ok
    assert len(record) == 1
    assert "data_batch_1" in str(record[0].message) and "official checksums" in str(record[0].message)


def test_missing_file_is_named(folder: Path) -> None:
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing: .*data_batch_3"):
        load_cifar10(folder.parent)


def test_truncated_file_is_named(folder: Path) -> None:
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="test_batch") as exc:
        load_cifar10(folder.parent)
    assert "truncated" in str(exc.value)


def test_absent_data_without_network_says_where_to_put_it(tmp_path: Path, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", no_network)
    with pytest.raises(DataError) as exc:
        load_cifar10(tmp_path / "empty", download=True)
    message = str(exc.value)
    assert "could not download" in message
    assert str(tmp_path / "empty" / "cifar-10-batches-py") in message and "data.root" in message


def test_split_is_fixed_by_its_own_seed_and_disjoint() -> None:
    train_a, val_a = split_train_val(1000, 100, split_seed=0)
    torch.manual_seed(123)  # the global (trial) seed must not matter
    train_b, val_b = split_train_val(1000, 100, split_seed=0)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    assert len(val_a) == 100 and len(train_a) == 900
    assert set(train_a.tolist()).isdisjoint(val_a.tolist())
    assert set(train_a.tolist()) | set(val_a.tolist()) == set(range(1000))
    _, val_c = split_train_val(1000, 100, split_seed=1)
    assert not torch.equal(val_a, val_c)


def test_load_data_applies_split_and_subsets(folder: Path) -> None:
    cfg = DataConfig(root=str(folder.parent), download=False, val_size=10, train_subset=50, test_subset=7)
    with pytest.warns(ChecksumWarning):
        data = load_data(cfg)
    assert data.sizes() == {"train": 50, "val": 10, "test": 7}
    with pytest.warns(ChecksumWarning):
        again = load_data(cfg)
    assert torch.equal(data.val_x, again.val_x) and torch.equal(data.train_y, again.train_y)


def test_augment_crops_and_flips_reproducibly() -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, augment(images, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment(images, torch.Generator().manual_seed(1)))

    # Every output is one of the 81 crops of the padded image, possibly mirrored.
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    flips = 0
    for i in range(len(images)):
        crops = [padded[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        plain = any(torch.equal(out[i], c) for c in crops)
        mirrored = any(torch.equal(out[i], c.flip(2)) for c in crops)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 15 < flips < 49  # about half of 64


def test_normalize_standardizes_and_sets_layout() -> None:
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    out = normalize(images, channels_last=True)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    expected = (images[:, 0].float() / 255 - data_mod.MEAN[0]) / data_mod.STD[0]
    assert torch.allclose(out[:, 0], expected)


def test_the_written_out_release_facts_are_torchvisions() -> None:
    """data.py names the official files and md5s itself (no torchvision on its import path); they must
    stay what torchvision knows."""
    from torchvision.datasets import CIFAR10

    from cifar_tune import data

    assert data.BASE_FOLDER == CIFAR10.base_folder and data.META_FILE == CIFAR10.meta["filename"]
    assert data.TRAIN_FILES == [n for n, _ in CIFAR10.train_list] and data.TEST_FILES == [n for n, _ in CIFAR10.test_list]
    assert data.OFFICIAL_MD5 == dict(CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"],
                                                                                 CIFAR10.meta["md5"]]])
    assert (data.ARCHIVE_URL, data.ARCHIVE_MD5) == (CIFAR10.url, CIFAR10.tgz_md5)
    assert data.ARCHIVE_URL.endswith(CIFAR10.filename)
