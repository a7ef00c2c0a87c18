"""``ecos-client``: the client's side of ECOS. Only the output message and the privacy ledger are written.

    ecos-client respond --centroids centroids.ecos --data <image folder> --out scores.ecos
    ecos-client label --queries queries.ecos --data <class sub-folders of images> --out labels.ecos

Images never leave the machine and features are never written: the output holds K noisy scores
(``respond``) or one noisy-argmax label per query (``label``). Every release is recorded in one JSON
privacy ledger per client (default ``~/.ecos_lightning/privacy_ledger.json``) whose composed epsilon
(dp-accounting PLD) must stay within ``--max-epsilon``: a release that would pass it is refused
before any image is read or anything is written.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

from ..ledger import read_ledger, record_releases

from ..encoders import EncoderSpec, build_encoder, extract_features
from ..features import atomic_write_bytes
from ..knn_labels import PrivateKnnLabeler
from ..protocol import CentroidsMessage, ClientResponder, ScoresMessage, gaussian_epsilon
from ..protocol.label_messages import LabelsMessage, QueriesMessage
from ..protocol.privacy import gaussian_release, releases_epsilon
from . import Parser, epsilon_text, positive, read_message, run
from .images import ImageFiles, scan_images, scan_labelled_images

DEFAULT_LEDGER = Path.home() / ".ecos_lightning" / "privacy_ledger.json"


def respond(args) -> None:
    start = time.perf_counter()
    centroids, _ = read_message(CentroidsMessage, args.centroids)
    spec = _message_encoder(centroids.encoder, args.encoder, args.centroids)
    responder = ClientResponder(noise_multiplier=args.noise_multiplier, q=args.q, delta=args.delta)
    release = {**gaussian_release(args.noise_multiplier, what=f"ecos coverage scores, centroids "
                                  f"{centroids.digest()[:16]}"), "q": args.q, "delta": args.delta}
    before, after = _check_budget(args, [release])
    scan = scan_images(args.data)
    epsilon = gaussian_epsilon(args.noise_multiplier, args.delta)
    what = f"{centroids.num_clusters} float32 noisy scores"
    if args.dry_run:
        zeros = np.zeros(centroids.num_clusters, np.float32)
        blob = ScoresMessage(zeros, args.noise_multiplier, args.q, args.delta, epsilon, centroids.digest()).to_bytes()
        _report(args, scan, blob, what, epsilon, before, after, start, dry_run=True)
        return
    features = extract_features(build_encoder(spec), ImageFiles(scan.paths), desc="client features")
    blob = responder.respond(centroids, features).to_bytes()
    _release(args, blob, [release])
    _report(args, scan, blob, what, epsilon, before, after, start)


def label(args) -> None:
    start = time.perf_counter()
    queries, down = read_message(QueriesMessage, args.queries)
    spec = _message_encoder(queries.encoder, args.encoder, args.queries)
    labeler = PrivateKnnLabeler(k=args.k, noise_multiplier=args.noise_multiplier, sampling_rate=args.sampling_rate)
    num_queries = queries.features.shape[0]
    release = {**labeler.release(num_queries), "k": args.k, "delta": args.delta}
    before, after = _check_budget(args, [release])
    scan = scan_labelled_images(args.data)
    epsilon = releases_epsilon([release], args.delta)

    def message(labels: np.ndarray) -> bytes:
        return LabelsMessage(labels, scan.class_names, hashlib.sha256(down).hexdigest(), args.noise_multiplier,
                             args.k, labeler.sampling_rate, args.delta, epsilon, after).to_bytes()

    what = f"{num_queries} int64 labels over {len(scan.class_names)} classes"
    if args.dry_run:
        blob = message(np.zeros(num_queries, np.int64))
        _report(args, scan, blob, what, epsilon, before, after, start, dry_run=True)
        return
    encoder = build_encoder(spec)
    if encoder.feature_dim != queries.features.shape[1]:
        raise ValueError(f"{args.queries}: query features have d={queries.features.shape[1]} but encoder "
                         f"{spec.name} gives d={encoder.feature_dim}")
    features = extract_features(encoder, ImageFiles(scan.paths), desc="client features")
    labels = labeler.label(queries.features, features, np.asarray(scan.labels), len(scan.class_names))
    blob = message(labels)
    _release(args, blob, [release])
    _report(args, scan, blob, what, epsilon, before, after, start)


def _message_encoder(encoder: dict | None, expected: str | None, source: str) -> EncoderSpec:
    """The encoder spec named in a message; ``ValueError`` when absent or not ``--encoder``."""
    if encoder is None:
        raise ValueError(f"{source} names no encoder: the cloud must send its encoder spec")
    spec = EncoderSpec.from_dict(encoder)
    if expected is not None and spec.name != expected:
        raise ValueError(f"{source} was made with encoder {spec.name!r}, not --encoder {expected!r}: "
                         "features of different encoders are not comparable")
    return spec


def _check_budget(args, releases: list[dict]) -> tuple[float, float]:
    """Composed ledger epsilon (before, after) these releases; ``ValueError`` when after > --max-epsilon."""
    recorded = [r for entry in read_ledger(args.ledger)["entries"] for r in entry["releases"]]
    before = releases_epsilon(recorded, args.delta)
    after = releases_epsilon(recorded + releases, args.delta)
    if args.max_epsilon is not None and after > args.max_epsilon:
        raise ValueError(f"privacy ledger {args.ledger}: this release would raise the composed epsilon from "
                         f"{epsilon_text(before)} to {epsilon_text(after)} > --max-epsilon {args.max_epsilon:g} "
                         f"at delta {args.delta:g}; refused, nothing was read or written")
    return before, after


def _release(args, blob: bytes, releases: list[dict]) -> None:
    """Record the release in the ledger, then write the output (a failed write keeps the charge)."""
    record_releases(args.ledger, hashlib.sha256(blob).hexdigest(), releases, args.delta, args.max_epsilon)
    atomic_write_bytes(Path(args.out), blob)


def _report(args, scan, blob: bytes, what: str, epsilon: float, before: float, after: float, start: float,
            dry_run: bool = False) -> None:
    verb = "would write" if dry_run else "wrote"
    print(f"data: {scan.summary()}")
    print(f"{verb} {args.out}: {len(blob):,} bytes up ({what})")
    print(f"epsilon: {epsilon_text(epsilon)} at delta {args.delta:g}")
    limit = f" (max {args.max_epsilon:g})" if args.max_epsilon is not None else ""
    print(f"ledger {args.ledger}: total epsilon {epsilon_text(before)} -> {epsilon_text(after)}{limit}")
    print(f"time: {time.perf_counter() - start:.1f} s" + ("  (dry run: nothing written)" if dry_run else ""))


def build_parser() -> Parser:
    parser = Parser(prog="ecos-client", description="The client's side of ECOS: answer the cloud's messages with "
                    "differentially private releases; only the output message and the privacy ledger are written.")
    commands = parser.add_subparsers(required=True, metavar="command", parser_class=Parser)

    def common(p, noise: float) -> None:
        p.add_argument("--out", required=True, help="message to send back to the cloud")
        p.add_argument("--noise-multiplier", type=float, default=noise,
                       help=f"Gaussian noise std / sensitivity (default {noise:g}; 0 = not private)")
        p.add_argument("--delta", type=float, default=1e-5, help="delta at which epsilon is composed")
        p.add_argument("--ledger", type=Path, default=DEFAULT_LEDGER, help=f"privacy ledger (default {DEFAULT_LEDGER})")
        p.add_argument("--max-epsilon", type=positive(float), help="refuse a release that would compose the "
                       "ledger past this epsilon")
        p.add_argument("--encoder", help="expected encoder name: refuse a message made with another one")
        p.add_argument("--dry-run", action="store_true", help="show what would be written and the ledger "
                       "effect; write nothing, extract nothing")

    p = commands.add_parser("respond", help="centroids message -> K noisy coverage scores")
    p.add_argument("--centroids", required=True, help="centroids message from the cloud")
    p.add_argument("--data", required=True, help="folder of private images (any format PIL reads, nested)")
    p.add_argument("--q", type=positive(int), default=1, help="each image covers its q nearest centroids")
    common(p, noise=8.0)
    p.set_defaults(func=respond)

    p = commands.add_parser("label", help="queries message -> Private kNN labels")
    p.add_argument("--queries", required=True, help="queries message from the cloud")
    p.add_argument("--data", required=True, help="labelled private images: one sub-folder per class")
    p.add_argument("--k", type=positive(int), default=20, help="neighbours voting per query")
    p.add_argument("--sampling-rate", type=float, default=0.3, help="Poisson sampling rate of the labelled "
                   "set per query, in (0, 1]")
    common(p, noise=2.0)
    p.set_defaults(func=label)
    return parser


def main(argv: list[str] | None = None) -> None:
    run(build_parser(), argv)


if __name__ == "__main__":
    main()
