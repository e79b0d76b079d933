"""Neural collapse in your own LightningModule: wdcollapse's MetricMonitor measures named layers
of any network through forward hooks, on a plain PyTorch DataLoader.

The network is torchvision's resnet18 trunk with a small MLP head (two ReLU layers, then a
linear head of two layers), written the way a user would; nothing of wdcollapse is subclassed.
The data are CIFAR-shaped random tensors so that the example runs anywhere in seconds:

    python examples/resnet18_mlp_head.py --out outputs/example    # metrics.jsonl, grams.json there

Swap in your own data by handing the monitor a DataLoader of your training set in a fixed order
(no shuffling, no augmentation): the metric pass reads it once per evaluated epoch.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wdcollapse.callbacks import MetricMonitor

NUM_CLASSES = 10
# The fully connected layers to measure, in forward order, by their names in
# model.named_modules(): two ReLU layers, then the linear head (the last two).
LAYERS = ["head.0", "head.2", "head.4", "head.5"]
LINEAR_DEPTH = 2


class ResNetWithMLPHead(pl.LightningModule):
    def __init__(self, width: int = 64, lr: float = 0.05, weight_decay: float = 5e-4):
        super().__init__()
        self.save_hyperparameters()
        trunk = torchvision.models.resnet18(num_classes=NUM_CLASSES)
        trunk.fc = nn.Identity()  # the trunk's 512 features feed the head
        self.trunk = trunk
        self.head = nn.Sequential(
            nn.Linear(512, width, bias=False),
            nn.ReLU(),
            nn.Linear(width, width, bias=False),
            nn.ReLU(),
            nn.Linear(width, width, bias=False),
            nn.Linear(width, NUM_CLASSES, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(
            self.parameters(), lr=self.hparams.lr, momentum=0.9, weight_decay=self.hparams.weight_decay
        )


def cifar_shaped(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % NUM_CLASSES)


def main(out: str = "outputs/example", epochs: int = 2, n: int = 256, seed: int = 0) -> ResNetWithMLPHead:
    pl.seed_everything(seed, verbose=False)
    train_set, test_set = cifar_shaped(n, seed), cifar_shaped(n // 4, seed + 1)
    model = ResNetWithMLPHead()
    monitor = MetricMonitor(
        out,
        schedule="every",  # at initialisation and after every epoch
        layers=LAYERS,
        linear_depth=LINEAR_DEPTH,
        data=DataLoader(train_set, batch_size=128),  # the metric pass: the training set, fixed order
        test_data=DataLoader(test_set, batch_size=128),
        num_classes=NUM_CLASSES,
        loss_fn=lambda output, labels: nn.functional.cross_entropy(output, labels, reduction="sum"),
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, DataLoader(train_set, batch_size=32, shuffle=True))
    return model


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/example")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--n", type=int, default=256, help="training samples")
    args = parser.parse_args()
    main(args.out, args.epochs, args.n)
