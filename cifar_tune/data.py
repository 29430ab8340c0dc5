"""CIFAR-10: finding, checking and loading the files, the fixed validation split,
and batch augmentation as tensor ops on the training device.

The whole data set is 180 MB of uint8, so it is read once per experiment and
kept as tensors (handed to trials through Ray's object store); augmentation
runs a batch at a time on whatever device the trial trains on, so the data
path never needs worker processes or PIL.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cifar_tune.config import DataConfig
from cifar_tune.errors import CifarTuneError

# The official release, as torchvision's CIFAR10 knows it (tests/test_data.py checks they agree). Written
# out so that reading the files needs no torchvision: a GPU box may lack it (benchmarks/gpu_check.py).
BASE_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILES = ["test_batch"]
META_FILE = "batches.meta"
OFFICIAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"

# Per-channel statistics of the CIFAR-10 training set, for normalization.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class DataError(CifarTuneError):
    """CIFAR-10 is missing, truncated or unreadable; the message says which file and what to do."""


class ChecksumWarning(UserWarning):
    """The files load but are not byte-identical to the official release."""


@dataclass
class CifarFiles:
    """The official files as read: 50,000 training and 10,000 test images, uint8 NCHW."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    checksums_ok: bool  # byte-identical to the official release


@dataclass
class CifarData:
    """The three splits as uint8 NCHW images and int64 labels, on the CPU."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    checksums_ok: bool

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


# --------------------------------------------------------------------------- files


def batches_dir(root: str | Path) -> Path:
    """The folder holding the batch files: `root/cifar-10-batches-py`, or `root` itself."""
    root = Path(root).expanduser()
    return root if (root / "data_batch_1").exists() else root / BASE_FOLDER


def ensure_downloaded(root: str | Path, download: bool) -> Path:
    """Return the batch folder, downloading CIFAR-10 into `root` first if it is absent and allowed."""
    folder = batches_dir(root)
    if folder.exists() or not download:
        return folder
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(ARCHIVE_URL, str(Path(root).expanduser()),
                                     filename=ARCHIVE_URL.rsplit("/", 1)[1], md5=ARCHIVE_MD5)
    except Exception as exc:  # network errors come in many types (URLError, OSError, ...)
        raise DataError(
            f"could not download CIFAR-10 ({type(exc).__name__}: {exc}).\n"
            f"Offline: copy the python-format files (data_batch_1..5, test_batch, batches.meta) into "
            f"{Path(root).expanduser() / BASE_FOLDER}, or set data.root to a folder that holds them, "
            f"e.g. --set data.root=/path/to/cifar-10-batches-py"
        ) from None
    return folder


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One python-format batch file -> (uint8 images N x 3 x 32 x 32, int64 labels)."""
    if not path.is_file():
        raise DataError(f"CIFAR-10 file missing: {path}")
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
        pixels = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except Exception as exc:  # truncated pickles raise EOFError, UnpicklingError, KeyError, ...
        raise DataError(f"CIFAR-10 file unreadable (truncated or not a CIFAR batch): {path}: "
                        f"{type(exc).__name__}: {exc}") from None
    if pixels.ndim != 2 or pixels.shape[1] != 3 * 32 * 32 or len(pixels) != len(labels):
        raise DataError(f"CIFAR-10 file malformed: {path}: data {pixels.shape}, {len(labels)} labels "
                        f"(expected N x 3072 and N labels)")
    return torch.from_numpy(pixels.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def load_cifar10(root: str | Path, download: bool = False) -> CifarFiles:
    """Read all six batches. Warns once if the bytes differ from the official release."""
    folder = ensure_downloaded(root, download)
    if not folder.exists():
        raise DataError(f"CIFAR-10 not found: {folder} does not exist (set data.root to the folder "
                        f"holding {BASE_FOLDER}/, or data.download: true)")
    for name in TRAIN_FILES + TEST_FILES + [META_FILE]:
        if not (folder / name).is_file():
            raise DataError(f"CIFAR-10 file missing: {folder / name}")

    mismatched = [name for name, md5 in OFFICIAL_MD5.items() if _md5(folder / name) != md5]
    if mismatched:
        warnings.warn(
            f"CIFAR-10 in {folder} does not match the official checksums ({', '.join(mismatched)}); "
            "loading it anyway. Accuracies will not be comparable to published ones "
            "(e.g. a re-encoded JPEG copy loses 2-3 points).",
            ChecksumWarning, stacklevel=2,
        )

    train = [read_batch(folder / name) for name in TRAIN_FILES]
    test_x, test_y = read_batch(folder / TEST_FILES[0])
    try:
        with (folder / META_FILE).open("rb") as f:
            classes = list(pickle.load(f, encoding="latin1")["label_names"])
    except Exception as exc:
        raise DataError(f"CIFAR-10 file unreadable: {folder / META_FILE}: {type(exc).__name__}: {exc}") from None
    train_x = torch.cat([x for x, _ in train])
    train_y = torch.cat([y for _, y in train])
    return CifarFiles(train_x, train_y, test_x, test_y, classes, checksums_ok=not mismatched)


def split_train_val(n: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a fixed train/validation split. Depends only on split_seed, never on the trial seed."""
    if not 0 < val_size < n:
        raise DataError(f"data.val_size {val_size} must be between 1 and {n - 1} for {n} training images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def load_data(config: DataConfig) -> CifarData:
    """Everything a trial needs, from a `data:` config section."""
    files = load_cifar10(config.root, config.download)
    train_idx, val_idx = split_train_val(len(files.train_y), config.val_size, config.split_seed)
    train_idx = train_idx[: config.train_subset]
    return CifarData(files.train_x[train_idx], files.train_y[train_idx], files.train_x[val_idx],
                     files.train_y[val_idx], files.test_x[: config.test_subset], files.test_y[: config.test_subset],
                     files.classes, files.checksums_ok)


def torchvision_cifar10(root: str | Path, train: bool, transform: Any = None) -> Any:
    """torchvision's CIFAR10 dataset without its md5 check, so that it also reads a re-encoded
    copy. Only for measuring the original study's DataLoader path; training never uses it."""
    from torchvision.datasets import CIFAR10

    class Unchecked(CIFAR10):
        def _check_integrity(self) -> bool:
            return all((Path(self.root) / self.base_folder / name).is_file()
                       for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:  # torchvision's checks batches.meta's md5 too
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = list(pickle.load(f, encoding="latin1")[self.meta["key"]])
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    return Unchecked(str(root), train=train, download=False, transform=transform)


# --------------------------------------------------------------------------- on-device batch ops


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop from a 4-pixel zero-padded image, then a random horizontal flip.

    Works on a uint8 batch on any device; all randomness comes from `generator`
    (which lives on that device), so a trial's augmentation is fixed by its seed.
    """
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator, device=device)
    dx = torch.randint(0, 9, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    # Gather every crop at once: index (image, channel, row, column) with broadcast grids.
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
    crops = padded[torch.arange(n, device=device)[:, None, None, None],
                   torch.arange(c, device=device)[None, :, None, None], rows, cols]
    return torch.where(flip[:, None, None, None], crops.flip(3), crops)


@functools.cache
def _channel_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them per call would copy host -> device twice per training
    # step, and each copy synchronizes the GPU.
    return (torch.tensor(MEAN, device=device).view(1, 3, 1, 1), torch.tensor(STD, device=device).view(1, 3, 1, 1))


def normalize(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 [0, 255] -> float32, zero mean and unit variance per channel."""
    mean, std = _channel_stats(images.device)
    out = (images.float() / 255.0 - mean) / std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
