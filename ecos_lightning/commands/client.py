"""``ecos-client``: the client's side of ECOS. Only the output message and the privacy ledger are written.

    ecos-client budget --max-epsilon 3 --delta 1e-5
    ecos-client respond --centroids centroids.ecos --data <image folder> --out scores.ecos
    ecos-client answer --query query.ecos --data <class sub-folders of images> --out answer.ecos [--set k=20]

``answer`` serves every registered label source that asks the client (the one its query message
belongs to): the same calls the in-process simulation makes. ``label`` (Private kNN, ``--k``,
``--sampling-rate``) and ``class-coverage`` are the same step under their former names and options.

Images never leave the machine and features are never written: the output holds K noisy scores
(``respond``), one noisy-argmax label per query (``label``) or noisy (centroid, class) counts
(``class-coverage``). Every release is recorded in one JSON
privacy ledger per client (default ``~/.ecos_lightning/privacy_ledger.json``, see
:mod:`ecos_lightning.client.ledger`) with one delta and one budget: a release that would pass it is refused
before any image is read, and checked again and recorded under the ledger's lock before the output is
written. The client runs only an encoder its own policy allows (:mod:`ecos_lightning.client.encoder_policy`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..data.folders import PathImageDataset, scan_images, scan_labelled_images
from ..client.encoder_policy import DEFAULT_MAX_INPUT_SIZE, EncoderPolicy
from ..encoders import build_encoder, extract_features
from ..files import atomic_write_bytes
from ..label_sources import ClassCoverage, ClientExchange, ClientKnn, client_exchange
from ..client.ledger import LedgerBook, ledger_path, ledger_snapshot, lock_path, open_ledger
from ..protocol import CentroidsMessage, ClientResponder, ScoresMessage
from ..protocol.privacy import gaussian_release, releases_epsilon
from . import Parser, add_settings, epsilon_text, parse_settings, positive, read_kind, read_message, run

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


def answer(args, source: ClientExchange | None = None) -> None:
    """A label source's query -> its answer (the label source is the one the query message belongs to; its
    parameters from ``--set`` and ``--noise-multiplier``)."""
    start = time.perf_counter()
    _check_out(args)
    if source is None:
        settings = parse_settings(args.set)
        if args.noise_multiplier is not None:
            if "noise_multiplier" in settings:
                raise ValueError("--noise-multiplier and --set noise_multiplier both given: give it once")
            settings["noise_multiplier"] = args.noise_multiplier
        source = client_exchange(args.label_source, settings, "answer", lambda: read_kind(args.query))
    query, down = read_message(source.query_type, args.query)
    _checked(source, query, args)
    spec = _policy(args).accept(query.encoder, query.feature_dim, args.query)
    digest = hashlib.sha256(down).hexdigest()
    book = ledger_snapshot(args.ledger, args.delta, args.max_epsilon)
    release = {**source.client_release(query, digest), "delta": book.delta}
    before, after = book.epsilon, book.check([release])
    scan = scan_labelled_images(args.data)
    classes = len(scan.class_names)
    _checked(source, query, args, classes)
    epsilon = releases_epsilon([release], book.delta)

    def message(payload, total: float) -> bytes:
        return source.make_answer(query, digest, payload, scan.class_names, book.delta, epsilon, total).to_bytes()

    what = source.describe_answer(query, classes)
    blob = message(None, after)  # a message that cannot be written fails here, unpaid
    if args.dry_run:
        _report(args, scan, blob, what, [release], book, before, after, start, dry_run=True)
        return
    features = extract_features(build_encoder(spec), PathImageDataset(scan.paths), desc="client features")
    payload = source.answer_payload(query, features, scan.labels, classes, seed=None)
    before, after, blob = _release(args, [release], lambda total: message(payload, total))
    _report(args, scan, blob, what, [release], book, before, after, start)


def _checked(source: ClientExchange, query, args, num_classes: int | None = None) -> None:
    """The label source's size limits for ``query``, refused naming the query file."""
    try:
        source.check_query(query, args.max_queries, num_classes)
    except ValueError as exc:
        raise ValueError(f"{args.query} {exc}") from None


def label(args) -> None:
    """``label``: ``answer`` a Private kNN query."""
    args.query = args.queries
    answer(args, ClientKnn(k=args.k, noise_multiplier=args.noise_multiplier, sampling_rate=args.sampling_rate))


def coverage(args) -> None:
    """``class-coverage``: ``answer`` a class-coverage query."""
    args.max_queries = DEFAULT_MAX_QUERIES
    answer(args, ClassCoverage(noise_multiplier=args.noise_multiplier))


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

    def common(p, noise: float | None) -> None:
        p.add_argument("--out", required=True, help="message to send back to the cloud")
        default = "the label source's" if noise is None else f"{noise:g}"
        p.add_argument("--noise-multiplier", type=float, default=noise,
                       help=f"Gaussian noise std / sensitivity (default {default}; 0 = not private)")
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

    p = commands.add_parser("answer", help="a label source's query -> its answer (Private kNN labels, class "
                            "histograms or any registered label source that asks the client)")
    p.add_argument("--query", required=True, help="query message from the cloud")
    p.add_argument("--label-source", help="the label source answering it, a registered name or import path "
                   "(default: the registered one whose query messages are of the query's kind)")
    p.add_argument("--data", required=True, help="labelled private images: one sub-folder per class")
    p.add_argument("--max-queries", type=positive(int), default=DEFAULT_MAX_QUERIES,
                   help=f"refuse a query asking for more labels (default {DEFAULT_MAX_QUERIES:,})")
    add_settings(p)
    common(p, noise=None)
    p.set_defaults(func=answer)

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
