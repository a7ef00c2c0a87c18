"""Shared by the digits-lite benchmarks: command-line options and cached encoder features."""

from __future__ import annotations

import argparse
import os

import numpy as np

from ecos_lightning.data import DOMAINS, DigitsLite, load_digits_lite
from ecos_lightning.encoders import spec_for_model
from ecos_lightning.features.cache import cached_features
from ecos_lightning.files import default_cache_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ECOS grid: domains, seeds, budget, K, privacy and the encoder."""
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--num-clusters", type=int, default=100)
    parser.add_argument("--epsilon", type=float, default=0.5, help="epsilon of the private ECOS query")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--input-size", type=int, default=64, help="encoder input side in pixels")
    parser.add_argument("--pooling", default="style", choices=("style", "avg"), help="encoder feature pooling")
    parser.add_argument("--cache-dir", default=os.environ.get("ECOS_CACHE_DIR"))


def digits_lite_features(args: argparse.Namespace) -> tuple[DigitsLite, np.ndarray]:
    """digits-lite and its features [N, d] from the offline efficientnet_lite0 (cached on disk)."""
    data = load_digits_lite(args.cache_dir)
    spec = spec_for_model("efficientnet_lite0", weights="offline", input_size=args.input_size, pooling=args.pooling)
    cache = args.cache_dir or default_cache_dir()
    return data, cached_features(spec, data.images, "digits-lite-v1-seed0", cache, desc="digits-lite features")
