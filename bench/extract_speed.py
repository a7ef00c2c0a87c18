"""Feature extraction speed: this project's extraction against a bare ``torch.inference_mode`` loop.

Both run the same frozen timm model (``num_classes=0``) on the same images, batch size and device, in
one process, alternating (ours, bare, ours, bare, ...) so machine load hits both alike; the table gives
the best images/s of each (the run least disturbed by other load) and their ratio. "ours" is ``extract_features`` over a map-style dataset of
the images (a DataLoader, collation, preprocessing on the device, checks, L2 norm, features back to
numpy); "bare" slices a uint8 array into batches, preprocesses them and runs the model.

    python bench/extract_speed.py                                  # digits-lite, efficientnet_lite0, 64 px, CPU
    python bench/extract_speed.py --models resnet50 efficientnet_b0 --input-size 224 --weights none --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ecos_lightning.data import load_digits_lite
from ecos_lightning.encoders import build_encoder, extract_features, spec_for_model
from ecos_lightning.encoders.preprocess import preprocess


def bare_loop(encoder, images: np.ndarray, batch_size: int) -> float:
    """Seconds for a plain loop: preprocess every batch, run the model under inference_mode."""
    device, spec = encoder.device, encoder.spec
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            pixels = preprocess(torch.from_numpy(images[i:i + batch_size]).to(device), spec)
            encoder.model(pixels.contiguous(memory_format=torch.channels_last) if encoder.channels_last else pixels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ours(encoder, images: np.ndarray, batch_size: int) -> float:
    """Seconds for ``extract_features`` over a dataset (a list) of the images."""
    start = time.perf_counter()
    extract_features(encoder, list(images), batch_size=batch_size, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0"])
    parser.add_argument("--weights", default="offline", help="offline (efficientnet_lite0 only) or none (random)")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    images = load_digits_lite(None).images[: args.images]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{len(images)} digits-lite images (32 px) at {args.input_size} px, batch {args.batch_size}, "
          f"{device_name}, best of {args.repeats} alternating runs\n")
    print("| model | ours (img/s) | bare loop (img/s) | ours / bare |")
    print("|---|---:|---:|---:|")
    for name in args.models:
        weights = args.weights if name == "efficientnet_lite0" else "none"
        spec = spec_for_model(name, weights=weights, input_size=args.input_size, pooling="avg")
        encoder = build_encoder(spec, device=args.device)
        ours(encoder, images[: args.batch_size], args.batch_size)  # warm-up
        bare_loop(encoder, images[: args.batch_size], args.batch_size)
        times = {"ours": [], "bare": []}
        for _ in range(args.repeats):
            times["ours"].append(ours(encoder, images, args.batch_size))
            times["bare"].append(bare_loop(encoder, images, args.batch_size))
        rate = {k: len(images) / min(v) for k, v in times.items()}
        print(f"| {name} | {rate['ours']:,.0f} | {rate['bare']:,.0f} | {rate['ours'] / rate['bare']:.2f} |")


if __name__ == "__main__":
    main()
