"""Small data modules shared by the corpus (no downloads: sklearn's digits or generated data)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


def digits(n: int = 256, image: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` of scikit-learn's bundled 8x8 digits, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:n] / 16.0, dtype=torch.float32)
    if image:
        x = x.reshape(-1, 1, 8, 8)
    return x, torch.tensor(y[:n], dtype=torch.int64)


class DigitsData(L.LightningDataModule):
    """Digits split into train and validation, as most tutorials do it."""

    def __init__(self, batch_size: int = 32, n: int = 256, image: bool = False, val_batch_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        x, y = digits(self.hparams.n, self.hparams.image)
        cut = self.hparams.n * 3 // 4
        self.train_set = TensorDataset(x[:cut], y[:cut])
        self.val_set = TensorDataset(x[cut:], y[cut:])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.val_batch_size)
