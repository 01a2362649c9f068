"""`ClassifierModule`: a plain classifier as a LightningModule, for the demo and for tests."""
from __future__ import annotations

import pytorch_lightning as pl
import torch


class ClassifierModule(pl.LightningModule):
    """A LightningModule around a plain classifier: cross-entropy, Adam, accuracy logged."""

    def __init__(self, model: torch.nn.Module, lr: float = 1e-2) -> None:
        super().__init__()
        self.model, self.lr = model, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        self.log(f"{stage}_loss", loss, prog_bar=True)
        self.log(f"{stage}_acc", (logits.argmax(-1) == labels).float().mean(), prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)
