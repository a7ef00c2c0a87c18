"""``ecos-client``: the client's side of ECOS. Only the output message and the privacy ledger are written.

    ecos-client budget --max-epsilon 3 --delta 1e-5
    ecos-client respond --centroids centroids.ecos --data <image folder> --out scores.ecos
    ecos-client label --queries queries.ecos --data <class sub-folders of images> --out labels.ecos
    ecos-client class-coverage --query coverage_query.ecos --data <class sub-folders of images> --out histogram.ecos

Images never leave the machine and features are never written: the output holds K noisy scores
(``respond``), one noisy-argmax label per query (``label``) or noisy (centroid, class) counts
(``class-coverage``). Every release is recorded in one JSON
privacy ledger per client (default ``~/.ecos_lightning/privacy_ledger.json``, see
:mod:`ecos_lightning.ledger`) with one delta and one budget: a release that would pass it is refused
before any image is read, and checked again and recorded under the ledger's lock before the output is
written. The client runs only an encoder its own policy allows (:mod:`ecos_lightning.encoder_policy`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import class_coverage
from ..data.folders import PathImageDataset, scan_images, scan_labelled_images
from ..encoder_policy import DEFAULT_MAX_INPUT_SIZE, EncoderPolicy
from ..encoders import build_encoder, extract_features
from ..files import atomic_write_bytes
from ..knn_labels import PrivateKnnLabeler
from ..ledger import LedgerBook, ledger_path, ledger_snapshot, lock_path, open_ledger
from ..protocol import CentroidsMessage, ClientResponder, ScoresMessage
from ..protocol.coverage_messages import MAX_CELLS, ClassHistogramMessage, CoverageQueryMessage
from ..protocol.label_messages import LabelsMessage, QueriesMessage
from ..protocol.privacy import gaussian_release, releases_epsilon
from . import Parser, epsilon_text, positive, read_message, run

DEFAULT_LEDGER = Path.home() / ".ecos_lightning" / "privacy_ledger.json"
DEFAULT_MAX_QUERIES = 100_000


def budget(args) -> None:
    if args.max_epsilon is None:
        book = ledger_snapshot(args.ledger, args.delta)
        if not book.exists:
            raise ValueError(f"privacy ledger {args.ledger} does not exist; create it with --max-epsilon")
    else:
        with open_ledger(args.ledger, args.delta) as book:
            book.set_budget(args.max_epsilon)
    limit = "none" if book.budget is None else f"{book.budget:g}"
    print(f"ledger {args.ledger}: {len(book.entries)} release(s), total epsilon {epsilon_text(book.epsilon)} at "
          f"delta {book.delta:g} (PLD; RDP {epsilon_text(book.epsilon_rdp)}), budget {limit}")


def respond(args) -> None:
    start = time.perf_counter()
    _check_out(args)
    centroids, _ = read_message(CentroidsMessage, args.centroids)
    spec = _policy(args).accept(centroids.encoder, centroids.feature_dim, args.centroids)
    book = ledger_snapshot(args.ledger, args.delta, args.max_epsilon)
    release = {**gaussian_release(args.noise_multiplier, what=f"ecos coverage scores, centroids "
                                  f"{centroids.digest()[:16]}"), "q": args.q, "delta": book.delta}
    before, after = book.epsilon, book.check([release])
    scan = scan_images(args.data)
    epsilon = releases_epsilon([release], book.delta)
    what = f"{centroids.num_clusters} float32 noisy scores"
    if args.dry_run:
        zeros = np.zeros(centroids.num_clusters, np.float32)
        blob = ScoresMessage(zeros, args.noise_multiplier, args.q, book.delta, epsilon, centroids.digest()).to_bytes()
        _report(args, scan, blob, what, [release], book, before, after, start, dry_run=True)
        return
    features = extract_features(build_encoder(spec), PathImageDataset(scan.paths), desc="client features")
    responder = ClientResponder(noise_multiplier=args.noise_multiplier, q=args.q, delta=book.delta)
    blob = responder.respond(centroids, features).to_bytes()
    before, after, _ = _release(args, [release], lambda total: blob)
    _report(args, scan, blob, what, [release], book, before, after, start)


def label(args) -> None:
    start = time.perf_counter()
    _check_out(args)
    queries, down = read_message(QueriesMessage, args.queries)
    if queries.features.shape[0] > args.max_queries:
        raise ValueError(f"{args.queries} asks for {queries.features.shape[0]:,} labels > --max-queries "
                         f"{args.max_queries:,}; refused before any accounting or image read")
    spec = _policy(args).accept(queries.encoder, queries.features.shape[1], args.queries)
    labeler = PrivateKnnLabeler(k=args.k, noise_multiplier=args.noise_multiplier, sampling_rate=args.sampling_rate)
    num_queries = queries.features.shape[0]
    book = ledger_snapshot(args.ledger, args.delta, args.max_epsilon)
    release = {**labeler.release(num_queries), "k": args.k, "delta": book.delta}
    before, after = book.epsilon, book.check([release])
    scan = scan_labelled_images(args.data)
    epsilon = releases_epsilon([release], book.delta)

    def message(labels: np.ndarray, total: float) -> bytes:
        return LabelsMessage(labels, scan.class_names, hashlib.sha256(down).hexdigest(), args.noise_multiplier,
                             args.k, labeler.sampling_rate, book.delta, epsilon, total).to_bytes()

    what = f"{num_queries} int64 labels over {len(scan.class_names)} classes"
    blob = message(np.zeros(num_queries, np.int64), after)  # a message that cannot be written fails here, unpaid
    if args.dry_run:
        _report(args, scan, blob, what, [release], book, before, after, start, dry_run=True)
        return
    features = extract_features(build_encoder(spec), PathImageDataset(scan.paths), desc="client features")
    labels = labeler.label(queries.features, features, np.asarray(scan.labels), len(scan.class_names))
    before, after, blob = _release(args, [release], lambda total: message(labels, total))
    _report(args, scan, blob, what, [release], book, before, after, start)


def coverage(args) -> None:
    start = time.perf_counter()
    _check_out(args)
    query, down = read_message(CoverageQueryMessage, args.query)
    spec = _policy(args).accept(query.encoder, query.feature_dim, args.query)
    digest, resolutions = hashlib.sha256(down).hexdigest(), int(query.clusters.size)
    book = ledger_snapshot(args.ledger, args.delta, args.max_epsilon)
    release = {**class_coverage.release(args.noise_multiplier, resolutions,
                                        what=f"class coverage histograms, query {digest[:16]}"), "delta": book.delta}
    before, after = book.epsilon, book.check([release])
    scan = scan_labelled_images(args.data)
    rows, classes = query.centroids.shape[0], len(scan.class_names)
    if rows * classes > MAX_CELLS:
        raise ValueError(f"{args.query} asks for {rows:,} centroids x {classes:,} classes > {MAX_CELLS:,} cells; "
                         "refused before any feature is extracted")
    epsilon = releases_epsilon([release], book.delta)

    def message(counts: np.ndarray, total: float) -> bytes:
        return ClassHistogramMessage(counts, scan.class_names, digest, args.noise_multiplier, resolutions, book.delta,
                                     epsilon, total).to_bytes()

    what = f"{rows} x {classes} float32 noisy counts ({resolutions} histograms)"
    blob = message(np.zeros((rows, classes), np.float32), after)  # a message that cannot be written fails here
    if args.dry_run:
        _report(args, scan, blob, what, [release], book, before, after, start, dry_run=True)
        return
    features = extract_features(build_encoder(spec), PathImageDataset(scan.paths), desc="client features")
    counts = class_coverage.class_histogram(class_coverage.CoverageQuery.from_message(query), features,
                                            np.asarray(scan.labels), classes)
    noisy = class_coverage.release_histogram(counts, args.noise_multiplier, np.random.default_rng())
    before, after, blob = _release(args, [release], lambda total: message(noisy, total))
    _report(args, scan, blob, what, [release], book, before, after, start)


def _check_out(args) -> None:
    """Refuse an ``--out`` that is a folder or would overwrite the ledger or its lock."""
    out = Path(os.path.realpath(args.out))
    if out.is_dir():
        raise ValueError(f"--out {args.out} is a folder: name the message file to write")
    if out in (ledger_path(args.ledger), lock_path(args.ledger)):
        raise ValueError(f"--out {args.out} is the privacy ledger or its lock: write the message elsewhere")


def _policy(args) -> EncoderPolicy:
    return EncoderPolicy.for_client(args.encoder, args.encoder_weights, args.max_input_size)


def _release(args, releases: list[dict], make_blob: Callable[[float], bytes]) -> tuple[float, float, bytes]:
    """Under the ledger's lock: check the budget, build the output (given the new total), record it; then
    write the output. A crash after recording keeps the charge. The ledger's delta must still be the one the
    releases (and the output) were built with. Returns (epsilon before, after, output)."""
    with open_ledger(args.ledger, releases[0]["delta"], args.max_epsilon) as book:
        before, after = book.epsilon, book.check(releases)
        blob = make_blob(after)
        book.record(hashlib.sha256(blob).hexdigest(), releases)
    atomic_write_bytes(Path(args.out), blob)
    return before, after, blob


def _report(args, scan, blob: bytes, what: str, releases: list[dict], book: LedgerBook, before: float, after: float,
            start: float, dry_run: bool = False) -> None:
    """What the client released and what it cost (PLD, and RDP, the paper's accountant, beside it)."""
    verb = "would write" if dry_run else "wrote"
    print(f"data: {scan.summary()}")
    print(f"{verb} {args.out}: {len(blob):,} bytes up ({what})")
    print(f"epsilon: {epsilon_text(releases_epsilon(releases, book.delta))} at delta {book.delta:g} (PLD; RDP "
          f"{epsilon_text(releases_epsilon(releases, book.delta, 'rdp'))})")
    limit = f" (max {book.max_epsilon:g})" if book.max_epsilon is not None else ""
    rdp_after = releases_epsilon(book.releases + releases, book.delta, "rdp")
    print(f"ledger {args.ledger}: total epsilon {epsilon_text(before)} -> {epsilon_text(after)}{limit} (PLD; RDP "
          f"{epsilon_text(book.epsilon_rdp)} -> {epsilon_text(rdp_after)})")
    print(f"time: {time.perf_counter() - start:.1f} s" + ("  (dry run: nothing written)" if dry_run else ""))


def build_parser() -> Parser:
    parser = Parser(prog="ecos-client", description="The client's side of ECOS: answer the cloud's messages with "
                    "differentially private releases; only the output message and the privacy ledger are written.")
    commands = parser.add_subparsers(required=True, metavar="command", parser_class=Parser)

    def ledger_options(p) -> None:
        p.add_argument("--ledger", type=Path, default=DEFAULT_LEDGER, help=f"privacy ledger (default {DEFAULT_LEDGER})")
        p.add_argument("--delta", type=positive(float), help="delta at which the ledger composes epsilon, fixed "
                       "when it is created (default: the ledger's own; 1e-5 for a new ledger)")

    p = commands.add_parser("budget", help="set (or lower) the ledger's epsilon budget, or show the ledger")
    ledger_options(p)
    p.add_argument("--max-epsilon", type=positive(float), help="the budget: set once, can only be lowered later")
    p.set_defaults(func=budget)

    def common(p, noise: float) -> None:
        p.add_argument("--out", required=True, help="message to send back to the cloud")
        p.add_argument("--noise-multiplier", type=float, default=noise,
                       help=f"Gaussian noise std / sensitivity (default {noise:g}; 0 = not private)")
        ledger_options(p)
        p.add_argument("--max-epsilon", type=positive(float), help="refuse a release that would compose the "
                       "ledger past this epsilon; with no stored budget it becomes the ledger's budget, and it "
                       "can never raise a stored one")
        p.add_argument("--encoder", help="the only encoder to run for the cloud (default: the allow-list, "
                       "efficientnet_lite0 with its offline weights); a message naming another is refused")
        p.add_argument("--encoder-weights", help="weights this client loads for --encoder: offline | none | hub | "
                       "a weights file on this machine (never a path from the message)")
        p.add_argument("--max-input-size", type=positive(int), default=DEFAULT_MAX_INPUT_SIZE,
                       help=f"refuse an encoder input side above this many pixels (default {DEFAULT_MAX_INPUT_SIZE})")
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
    p.add_argument("--max-queries", type=positive(int), default=DEFAULT_MAX_QUERIES,
                   help=f"refuse a queries message asking for more labels (default {DEFAULT_MAX_QUERIES:,})")
    common(p, noise=2.0)
    p.set_defaults(func=label)

    p = commands.add_parser("class-coverage", help="coverage query -> noisy class histograms (labels for a whole "
                            "proxy at the price of one release per histogram)")
    p.add_argument("--query", required=True, help="coverage query message from the cloud")
    p.add_argument("--data", required=True, help="labelled private images: one sub-folder per class")
    common(p, noise=7.31)
    p.set_defaults(func=coverage)
    return parser


def main(argv: list[str] | None = None) -> None:
    run(build_parser(), argv)


if __name__ == "__main__":
    main()
