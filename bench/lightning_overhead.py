"""Training throughput of FineTuneModule under Lightning against a plain PyTorch loop.

Same model (efficientnet_lite0 at 64 px), same data (in-memory 32x32 images), same batch size,
same optimiser; the two are run alternately several times in one process and the median
throughput of each is compared. Throughput is images per second of process CPU time, run with one
thread (`torch.set_num_threads(1)`), so other jobs on a shared machine do not distort it.

    python bench/lightning_overhead.py
    python bench/lightning_overhead.py --steps 20 --repeats 5 --batch-size 64
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ecos_lightning.modules import FineTuneModule


def make_loader(steps: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(steps * batch_size, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (steps * batch_size,), generator=g)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=False)


def plain_loop(loader: DataLoader) -> float:
    """Images per second of a hand-written loop over the module's model and optimiser settings."""
    module = FineTuneModule(input_size=64, lr=1e-3)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=1e-4)
    module.train()
    seen, start = 0, time.process_time()
    for images, labels in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(module(images), labels)
        loss.backward()
        optimizer.step()
        seen += len(images)
    return seen / (time.process_time() - start)


class _Throughput(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        self.start = time.process_time()

    def on_train_end(self, trainer, pl_module):
        self.seconds = time.process_time() - self.start


def lightning_loop(loader: DataLoader) -> float:
    """Images per second of FineTuneModule.fit over the same loader (no logger, checkpoints or bars)."""
    module = FineTuneModule(input_size=64, lr=1e-3)
    timer = _Throughput()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, train_dataloaders=loader)
    return len(loader.dataset) / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    loader = make_loader(args.steps, args.batch_size)
    plain_loop(loader)  # warm-up: allocator, kernels
    plain, lightning = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(loader))
        lightning.append(lightning_loop(loader))
    p, lt = statistics.median(plain), statistics.median(lightning)
    print(f"efficientnet_lite0 at 64 px, batch {args.batch_size}, {args.steps} steps, {args.repeats} alternating "
          f"repeats, {torch.get_num_threads()} threads\n")
    print("| loop | images per CPU-second (median) | all runs |")
    print("|---|---:|---|")
    print(f"| plain PyTorch | {p:.1f} | {', '.join(f'{x:.1f}' for x in plain)} |")
    print(f"| Lightning FineTuneModule | {lt:.1f} | {', '.join(f'{x:.1f}' for x in lightning)} |")
    print(f"\nLightning / plain throughput: {lt / p:.3f} (overhead {100 * (1 - lt / p):+.1f}%)")


if __name__ == "__main__":
    main()
