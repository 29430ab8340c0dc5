"""Writing small CIFAR-10 python-format batch files, for tests (the real data is never needed)."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# One colour per class: a network learns it in a few dozen steps, crops and flips don't hide it.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [128, 128, 128]])


def make_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    labels = rng.integers(0, 10, n)
    pixels = PALETTE[labels][:, :, None] + rng.normal(0, 40, (n, 3, 1024))
    return np.clip(pixels, 0, 255).astype(np.uint8).reshape(n, 3072), [int(v) for v in labels]


def write_cifar(root: Path, per_batch: int = 100, n_test: int = 100, seed: int = 0) -> Path:
    """Write data_batch_1..5, test_batch and batches.meta under root/cifar-10-batches-py; return that folder."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = [(f"data_batch_{k}", per_batch) for k in range(1, 6)] + [("test_batch", n_test)]
    for name, n in files:
        data, labels = make_images(n, rng)
        with open(folder / name, "wb") as f:
            # str keys, as torchvision reads with encoding="latin1"
            pickle.dump({"batch_label": name, "labels": labels, "data": data}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=2)
    return folder


def md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in Path(folder).iterdir()}
