"""A GAN with a generator and a discriminator, each with its own optimizer, trained with manual
optimization (``toggle_optimizer``, ``manual_backward``, two updates per batch), as in Lightning's
GAN example; the generator's StepLR is stepped by hand at the end of every epoch."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class RingData(L.LightningDataModule):
    """Points on a noisy ring: the distribution the generator learns."""

    def __init__(self, n: int = 64, batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        g = torch.Generator().manual_seed(5)  # generated here, outside fit (see plateau_val.py)
        angle = torch.rand(n, generator=g) * 6.283
        ring = torch.stack([angle.cos(), angle.sin()], 1) + 0.05 * torch.randn(n, 2, generator=g)
        self.train_set = TensorDataset(ring)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)


class Model(L.LightningModule):
    def __init__(self, latent: int = 4, hidden: int = 16, lr: float = 2e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(latent, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 2))
        self.discriminator = nn.Sequential(nn.Linear(2, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        (real,) = batch
        opt_g, opt_d = self.optimizers()
        z = torch.randn(real.shape[0], self.hparams.latent, dtype=real.dtype, device=real.device)
        ones, zeros = torch.ones_like(real[:, :1]), torch.zeros_like(real[:, :1])

        self.toggle_optimizer(opt_g)
        fake = self.generator(z)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        self.manual_backward(g_loss)
        opt_g.step()
        opt_g.zero_grad()
        self.untoggle_optimizer(opt_g)

        self.toggle_optimizer(opt_d)
        d_loss = 0.5 * (F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
                        + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros))
        self.manual_backward(d_loss)
        opt_d.step()
        opt_d.zero_grad()
        self.untoggle_optimizer(opt_d)
        self.log_dict({"g_loss": g_loss, "d_loss": d_loss}, prog_bar=True)

    def on_train_epoch_end(self):
        sched_g = self.lr_schedulers()
        sched_g.step()

    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=(0.5, 0.999))
        sched_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=1, gamma=0.5)
        return [opt_g, opt_d], [sched_g]


Data = RingData
MODEL_ARGS: dict = {}
DATA_ARGS: dict = {}
TRAINER = {"max_epochs": 2, "limit_train_batches": 3}
CHANGED = ("limit_train_batches", 2)
