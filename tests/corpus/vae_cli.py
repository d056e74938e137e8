"""A VAE trained with Adam from a LightningCLI config: its data are drawn from the global RNG in
``setup`` (so they depend on the config's ``seed_everything``), and the reparameterisation draws
``torch.randn_like`` noise inside the step."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class BlobData(L.LightningDataModule):
    def __init__(self, n: int = 64, batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        centers = torch.randn(4, 8)  # the global RNG: seeded by the CLI's seed_everything
        x = centers[torch.arange(self.hparams.n) % 4] + 0.1 * torch.randn(self.hparams.n, 8)
        self.train_set = TensorDataset(x)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)


class Model(L.LightningModule):
    def __init__(self, latent: int = 2, hidden: int = 16, lr: float = 3e-3, beta: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 8))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = F.mse_loss(self.decoder(z), x)
        kl = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        loss = recon + self.hparams.beta * kl
        self.log_dict({"recon": recon, "kl": kl})
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


Data = BlobData
MODEL_ARGS: dict = {}
DATA_ARGS: dict = {}
TRAINER = {"max_steps": 6}
CHANGED = ("reload_dataloaders_every_n_epochs", 1)
SEED = 123
