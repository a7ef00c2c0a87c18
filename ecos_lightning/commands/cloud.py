"""``ecos-cloud``: the cloud's side of ECOS, one sub-command per step.

    ecos-cloud extract --open <pool> --state cloud_state --rank r --world-size n   # optional: n processes
    ecos-cloud probe --open <image folder | digits-lite:<domain>[:<split seed>]> --out centroids.ecos [--sampler ecos]
    ecos-cloud refine --scores scores.ecos --out centroids-2.ecos     # a sampler of several rounds only
    ecos-cloud sample --scores scores.ecos --budget B --out proxy.json
    ecos-cloud query --label-source class_coverage --proxy proxy.json --out query.ecos [--set clusters=[10,20]]
    ecos-cloud absorb --proxy proxy.json --query query.ecos --answer answer.ecos --out proxy.json

``probe`` and ``sample`` serve every sampler over ECOS's exchange (``samplers.CoverageSampler``, named by
``--sampler``): its ``fit`` and its ``select``, the calls the in-process simulation makes.
``query`` and ``absorb`` serve every registered label source that asks the client
(``label_sources.ClientExchange``): the same calls the in-process simulation makes. ``queries`` /
``attach-labels`` (Private kNN) and ``coverage-query`` / ``attach-coverage`` (class coverage) are the
same steps under their former names and options.

``probe`` keeps what the later steps need in a state folder (default ``cloud_state/`` next to
``--out``): the open-pool features (``features-<hash>.npy``, reused by a later probe of the same
pool and encoder) and ``state.safetensors``, one file written atomically: tensors ``assignment``
(int64 [N], the cluster of each pool image), ``members`` (int64 [N], pool indices grouped by
cluster, nearest to the centroid first) and ``centroids`` (uint8, the exact bytes of the centroids
message sent), and metadata ``info``: JSON ``{"version": 3, "open", "root", "paths", "features",
"features_sha256", "sampler", "seed"}`` (the pool as given to ``--open``, its absolute root and the image
paths relative to it, or nulls for digits-lite; the features file's name and the SHA-256 of its array;
the sampler's config and the k-means seed, which ``sample`` selects with). ``sample``
and ``queries`` refuse a state whose parts do not agree, or whose features file changed, with one
line. Nothing is pickled.

``extract`` fills the same features file from ``n`` processes (one per GPU or machine on a shared file
system): rank ``r`` extracts chunks ``i % n == r`` and the last rank to finish puts the file in place. The
first rank records the split (``<features file>.extract.json``: world size, chunk rows, batch size) and a
rank with another split is refused. A ``probe`` of the same pool, encoder and state folder reads the
finished file, or extracts the chunks still missing in the recorded split.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_safetensors

from ..data.sources import open_source, parse_source
from ..encoders import spec_for_model
from ..features.store import matrix_digest
from ..features.cache import cached_features, feature_path
from ..files import atomic_write_bytes, stable_hash
from ..components import Run
from ..label_sources import LABEL_SOURCES, ClassCoverage, ClientExchange, ClientKnn, client_exchange
from ..protocol import CentroidsMessage, CloudSampler, ScoresMessage
from ..samplers import SAMPLERS, CoverageSampler, get_sampler
from ..proxy import Proxy, is_pool_path, is_pool_root
from . import Parser, add_settings, epsilon_text, parse_settings, positive, read_kind, read_message, run

STATE_VERSION = 4
STATE_FILE = "state.safetensors"
STATE_INFO = ("version", "open", "root", "paths", "features", "features_sha256", "sampler", "seed", "round")
SCORE_RULE = (
    "Scores are clipped at 0 and used as allocation weights, uncapped (the cloud does not know the "
    "client's size): an enormous score can at most give its cluster all of its members; the rest of "
    "the budget goes to the other clusters by score, so the sample always holds B unique images.")


@dataclass(frozen=True)
class CloudState:
    """What ``probe`` leaves for ``sample`` and ``queries`` (see the module docstring).

    strategy: the sampler that probed (``CoverageSampler``, rebuilt from its config). sampler: its fitted
    CloudSampler (features, assignment, member order, centroids message). message_bytes: the exact bytes
    of the centroids message sent. info: the metadata ``info``.
    """

    strategy: CoverageSampler
    sampler: CloudSampler
    message_bytes: bytes
    info: dict

    @property
    def features(self) -> np.ndarray:
        return self.sampler.features_

    @classmethod
    def load(cls, folder: Path) -> "CloudState":
        """Read and check the state of ``folder``; one ``ValueError`` line on any problem."""
        path = folder / STATE_FILE
        if not path.is_file():
            raise ValueError(f"cloud state {path} not found: run `ecos-cloud probe` first or pass --state")
        try:
            with safe_open(path, framework="np") as handle:
                info = json.loads((handle.metadata() or {}).get("info", "null"))
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            return cls._checked(folder, info, tensors)
        except (SafetensorError, OSError, ValueError, RecursionError) as exc:  # MessageError is a ValueError
            raise ValueError(f"cloud state {path} is unusable ({exc}): run `ecos-cloud probe` again") from None

    @classmethod
    def _checked(cls, folder: Path, info, tensors: dict) -> "CloudState":
        if not isinstance(info, dict) or sorted(info) != sorted(STATE_INFO) or info["version"] != STATE_VERSION:
            raise ValueError(f"metadata 'info' must be a version {STATE_VERSION} object with keys {list(STATE_INFO)}")
        dtypes = {name: (array.dtype, array.ndim) for name, array in tensors.items()}
        fitted = {"assignment": (np.int64, 1), "members": (np.int64, 1), "centroids": (np.uint8, 1)}
        if dtypes not in (fitted, {**fitted, "parents": (np.int64, 1), "previous_scores": (np.uint8, 1)}):
            raise ValueError("tensors must be assignment and members (int64 [N]) and centroids (uint8), and after a "
                             "refine parents (int64 [K]) and previous_scores (uint8)")
        n = len(tensors["assignment"])
        if not isinstance(info["open"], str) or not info["open"]:
            raise ValueError("info 'open' must be a non-empty string")
        if info["root"] is None or info["paths"] is None:
            if info["root"] is not info["paths"]:
                raise ValueError("info 'root' and 'paths' must both be null or both be given")
        elif not (is_pool_root(info["root"]) and isinstance(info["paths"], list) and len(info["paths"]) == n
                  and all(is_pool_path(p) for p in info["paths"])):
            raise ValueError(f"info 'root' must be an absolute folder and 'paths' {n} relative paths inside it")
        if not isinstance(info["features"], str) or not re.fullmatch(r"features-[0-9a-f]{16}\.npy", info["features"]):
            raise ValueError(f"info 'features' must name a features-<hash>.npy file, got {info['features']!r}")
        features = np.load(folder / info["features"], mmap_mode="r", allow_pickle=False)
        if features.dtype != np.float32 or features.ndim != 2 or features.shape[0] != n:
            raise ValueError(f"the features file {info['features']} holds {features.dtype}{list(features.shape)}, "
                             f"not float32 [{n}, d]")
        features = np.array(features)
        if matrix_digest(features) != info["features_sha256"]:
            raise ValueError(f"the features file {info['features']} changed after probe")
        if isinstance(info["seed"], bool) or not isinstance(info["seed"], int):
            raise ValueError(f"info 'seed' must be an integer, got {info['seed']!r}")
        strategy = _coverage_sampler(info["sampler"], "the state's sampler")
        if isinstance(info["round"], bool) or not isinstance(info["round"], int) or \
                not 1 <= info["round"] <= strategy.rounds:
            raise ValueError(f"info 'round' must be an integer in [1, {strategy.rounds}], got {info['round']!r}")
        if ("parents" in tensors) != (info["round"] > 1):
            raise ValueError(f"a round {info['round']} state must {'' if info['round'] > 1 else 'not '}hold the "
                             "previous round's scores and parents")
        blob = tensors["centroids"].tobytes()
        previous = ScoresMessage.from_bytes(tensors["previous_scores"].tobytes()) if "parents" in tensors else None
        sampler = strategy.restore(CentroidsMessage.from_bytes(blob), features, tensors["assignment"],
                                   tensors["members"], info["seed"], tensors.get("parents"), previous)
        return cls(strategy, sampler, blob, info)


def _coverage_sampler(spec, what: str) -> CoverageSampler:
    """The sampler ``spec`` names, refused unless it asks the client for coverage scores."""
    sampler = get_sampler(spec)
    if not isinstance(sampler, CoverageSampler):
        raise ValueError(f"{what} {sampler.display_name()!r} does not ask the client for coverage scores (it is not "
                         "a CoverageSampler): run it in one process (train.py, select_proxy)")
    return sampler


def _probe_sampler(args) -> CoverageSampler:
    """The sampler ``--sampler`` names, with the probe's flags and ``--set`` parameters where its class takes them."""
    settings = parse_settings(args.set)
    flags = {"num_clusters": args.num_clusters, "q": args.q, "noise_multiplier": args.noise_multiplier,
             "fp16": args.fp16, "pca_dim": args.pca_dim}
    both = sorted(set(settings) & set(flags))
    if both:
        raise ValueError(f"--set {both[0]}: give it as --{both[0].replace('_', '-')}")
    chosen = _coverage_sampler(args.sampler, "--sampler")
    config = chosen.config()
    taken = type(chosen).parameters()
    unknown = sorted(set(settings) - set(taken))
    if unknown:
        raise ValueError(f"--set {unknown[0]}: the sampler {chosen.display_name()!r} takes {list(taken)}")
    overrides = {key: value for key, value in {**flags, **settings}.items() if key in taken}
    return _coverage_sampler({"class_path": config["class_path"], "init_args": {**config["init_args"], **overrides}},
                             "--sampler")


def probe(args) -> None:
    sampler = _probe_sampler(args)
    if sampler.num_clusters == "auto" and args.client_size is None:
        raise ValueError("--num-clusters auto needs --client-size: the number of images the client will score "
                         "(and --noise-multiplier if it answers with another sigma than 8)")
    out = Path(args.out)
    state_dir = _state_dir(args, out)
    spec = _encoder_spec(args)
    start = time.perf_counter()
    data, data_id, root, paths = _open_pool(args.open)
    path = feature_path(spec, data_id, state_dir)
    split = {} if path.exists() else _recorded_layout(path)  # finish an unfinished extract in its own chunks
    features = cached_features(spec, data, data_id, state_dir, desc="open-pool features",
                               **{key: split[key] for key in ("batch_size", "chunk_rows") if key in split})
    _release_layout(path)
    run = Run(budget=1, seed=args.seed, progress=True, faiss_gpu=False if args.faiss_cpu else None)
    cloud = sampler.fit(features, spec.to_dict(), run, args.client_size or 1)
    info = {"version": STATE_VERSION, "open": args.open, "root": root, "paths": paths,
            # the file cached_features wrote for this pool and encoder
            "features": path.name,
            "features_sha256": matrix_digest(features), "sampler": sampler.config(), "seed": args.seed, "round": 1}
    _write_state(state_dir, info, cloud, out)
    print(f"open pool: {len(features)} images, features d={features.shape[1]} ({spec.name}, {spec.input_size}px, "
          f"{spec.pooling} pooling)")
    _report_centroids(out, cloud.message_, sampler, 1)
    print(f"state: {state_dir}  time: {time.perf_counter() - start:.1f} s")


def _write_state(state_dir: Path, info: dict, cloud: CloudSampler, out: Path) -> None:
    """The centroids message ``out``, then the state ``sample`` (or the next ``refine``) reads."""
    blob = cloud.message_.to_bytes()
    state = {"assignment": cloud.assignment_.astype(np.int64), "members": cloud.member_order_.astype(np.int64),
             "centroids": np.frombuffer(blob, dtype=np.uint8)}
    if cloud.previous_scores_ is not None:
        state.update(parents=cloud.parents_, previous_scores=np.frombuffer(cloud.previous_scores_.to_bytes(), np.uint8))
    atomic_write_bytes(out, blob)  # first: a run stopped between the two writes is run again to the same bytes
    atomic_write_bytes(state_dir / STATE_FILE, save_safetensors(state, metadata={"info": json.dumps(info)}))


def _report_centroids(out: Path, message: CentroidsMessage, sampler: CoverageSampler, round_: int) -> None:
    pca = " (PCA)" if message.projection is not None else ""
    print(f"wrote {out}: K={message.num_clusters} centroids, d={message.centroids.shape[1]} "
          f"{message.centroids.dtype}{pca}, {len(message.to_bytes()):,} bytes down")
    if sampler.rounds > 1:
        sigma = sampler.round_noise()[round_ - 1]
        after = "then `ecos-cloud refine`" if round_ < sampler.rounds else "then `ecos-cloud sample`"
        print(f"round {round_} of {sampler.rounds}: the client answers with --noise-multiplier {sigma:.6g}; {after}")


def _check_round(state: CloudState, scores: ScoresMessage, path) -> None:
    """Refuse scores that do not answer the centroids of the state's round."""
    try:
        scores.check_answers(state.sampler.message_)
    except ValueError as exc:
        raise ValueError(f"{path} does not answer the centroids of the state's round {state.info['round']} ({exc}): "
                         "pass the client's answer to the last centroids sent") from None


def refine(args) -> None:
    """The client's answer to this round -> the next round's centroids (the kept clusters split)."""
    out = Path(args.out)
    state_dir = _state_dir(args, out)
    state = CloudState.load(state_dir)
    scores, _ = read_message(ScoresMessage, args.scores)
    round_ = state.info["round"]
    _check_round(state, scores, args.scores)
    if round_ >= state.strategy.rounds:
        raise ValueError(f"{args.scores} answers round {round_} of the sampler's {state.strategy.rounds}: run "
                         "`ecos-cloud sample` with it")
    refined = state.sampler.refine(scores, state.strategy.sub_clusters)
    _write_state(state_dir, {**state.info, "round": round_ + 1}, refined, out)
    _report_centroids(out, refined.message_, state.strategy, round_ + 1)


def extract(args) -> None:
    if not 0 <= args.rank < args.world_size:
        raise ValueError(f"--rank {args.rank} must be in [0, --world-size {args.world_size})")
    if args.chunk_rows % args.batch_size:
        raise ValueError(f"--chunk-rows {args.chunk_rows} must be a multiple of --batch-size {args.batch_size}")
    spec = _encoder_spec(args)
    data, data_id, _, _ = _open_pool(args.open)
    state_dir = Path(args.state)
    path = feature_path(spec, data_id, state_dir)
    if not path.exists():
        _claim_layout(path, {"world_size": args.world_size, "chunk_rows": args.chunk_rows,
                             "batch_size": args.batch_size})
    start = time.perf_counter()
    features = cached_features(spec, data, data_id, state_dir, desc="open-pool features",
                               batch_size=args.batch_size, rank=args.rank, world_size=args.world_size,
                               chunk_rows=args.chunk_rows)
    if features is None:
        print(f"rank {args.rank} of {args.world_size}: its chunks of {path} are done; the file is complete when "
              f"every rank has finished ({time.perf_counter() - start:.1f} s)")
    else:
        _release_layout(path)
        print(f"{path}: features of all {len(features)} images, d={features.shape[1]}, complete: run "
              f"`ecos-cloud probe --state {state_dir}` with the same --open and encoder options "
              f"({time.perf_counter() - start:.1f} s)")


def _layout_files(path: Path) -> tuple[Path, Path]:
    """The layout record of an unfinished ``extract`` of the features file ``path``, and its lock."""
    return path.with_name(path.name + ".extract.json"), path.with_name(path.name + ".extract.lock")


def _claim_layout(path: Path, layout: dict) -> None:
    """Record how the ranks split the features file ``path`` (world size, chunk rows, batch size), or refuse a
    rank whose split differs from the recorded one: its chunks would never complete the file."""
    record, lock = _layout_files(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        if not record.exists():
            atomic_write_bytes(record, json.dumps(layout).encode())
            return
        recorded = _recorded_layout(path)
    if recorded != layout:
        flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in recorded.items())
        raise ValueError(f"{path} is being extracted with {flags} (recorded in {record}): run every rank with "
                         f"these, or delete {record} to start a new split")


def _recorded_layout(path: Path) -> dict:
    """The layout an unfinished ``extract`` recorded for ``path`` ({} if none)."""
    record, _ = _layout_files(path)
    try:
        layout = json.loads(record.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"{record}: unreadable ({exc}); delete it to start a new split") from None
    if (not isinstance(layout, dict) or set(layout) != {"world_size", "chunk_rows", "batch_size"}
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in layout.values())):
        raise ValueError(f"{record}: not an extract layout; delete it to start a new split")
    return layout


def _release_layout(path: Path) -> None:
    for file in _layout_files(path):
        file.unlink(missing_ok=True)


def sample(args) -> None:
    out = Path(args.out)
    state = CloudState.load(_state_dir(args, out))
    scores, blob = read_message(ScoresMessage, args.scores)
    _check_round(state, scores, args.scores)
    if state.info["round"] < state.strategy.rounds:
        raise ValueError(f"the state holds round {state.info['round']} of the sampler's {state.strategy.rounds}: run "
                         f"`ecos-cloud refine --scores {args.scores}` and ask the client again")
    pool = len(state.features)
    if args.budget > pool:
        raise ValueError(f"--budget {args.budget} is larger than the open pool ({pool} images)")
    selected = state.strategy.select(state.sampler, scores, Run(budget=args.budget, seed=state.info["seed"]))
    paths = state.info["paths"]
    proxy = selected.replace(root=state.info["root"], paths=None if paths is None else [paths[i] for i in selected.indices],
                             epsilon=scores.epsilon, delta=scores.delta, bytes_down=len(state.message_bytes),
                             bytes_up=len(blob), open=state.info["open"])
    proxy.write(out)
    drawn = len(set(selected.clusters or ()))
    print(f"wrote {out}: {len(selected.indices)} of {pool} open images from {drawn} of "
          f"{state.sampler.message_.num_clusters} clusters ({state.strategy.display_name()})")
    print(f"client epsilon: {epsilon_text(scores.epsilon)} at delta {scores.delta:g}; bytes down/up: "
          f"{proxy.bytes_down:,} / {proxy.bytes_up:,}")


def _proxy_features(proxy: Proxy, state: CloudState, proxy_path) -> np.ndarray:
    """The open-pool features float32 [B, d] of ``proxy``'s images, checked to be the images of the cloud state."""
    if (proxy.open, proxy.root) != (state.info["open"], state.info["root"]):
        raise ValueError(f"{proxy_path} was sampled from {proxy.open!r}, the cloud state holds "
                         f"{state.info['open']!r}: pass the matching --state")
    if max(proxy.indices) >= len(state.features):
        raise ValueError(f"{proxy_path}: indices beyond the open pool of {len(state.features)} images")
    if proxy.paths is not None and proxy.paths != [state.info["paths"][i] for i in proxy.indices]:
        raise ValueError(f"{proxy_path}: its paths are not the images its indices name in the cloud state: run "
                         "`ecos-cloud sample` again")
    return np.ascontiguousarray(state.features[proxy.indices], dtype=np.float32)


def query(args, source: ClientExchange | None = None) -> None:
    """Proxy file -> the query of a label source that asks the client (``--label-source``, ``--set``)."""
    source = source or client_exchange(args.label_source, parse_settings(args.set), "query")
    out = Path(args.out)
    proxy = Proxy.read(args.proxy)
    state = CloudState.load(_state_dir(args, out))
    features = _proxy_features(proxy, state, args.proxy)
    message = source.query(proxy, features, state.sampler.message_.encoder,
                           Run(budget=len(proxy), seed=getattr(args, "seed", 0)))
    blob = message.to_bytes()
    atomic_write_bytes(out, blob)
    print(f"wrote {out}: {source.describe_query(message, len(proxy))}, {len(blob):,} bytes down")


def absorb(args, source: ClientExchange | None = None) -> None:
    """The client's answer -> the labelled proxy file, after checking that the proxy, the query, the answer and
    (for a source that reads them) the cloud state's features all belong together."""
    out = Path(args.out)
    proxy = Proxy.read(args.proxy)
    source = source or client_exchange(args.label_source, parse_settings(args.set), "absorb",
                                       lambda: read_kind(args.query))
    message, query_blob = read_message(source.query_type, args.query)
    answer, answer_blob = read_message(source.answer_type, args.answer)
    if proxy.labels is not None:
        raise ValueError(f"{args.proxy} already carries labels")
    if message.proxy != stable_hash(proxy.indices):
        raise ValueError(f"{args.query} was made for another proxy set than {args.proxy}")
    if not source.answers(query_blob, message, answer):
        raise ValueError(f"{args.answer} does not answer {args.query}")

    def features() -> np.ndarray:
        state = CloudState.load(_state_dir(args, out))
        rows = _proxy_features(proxy, state, args.proxy)
        source.check_features(message, state.sampler.message_.encoder, rows)
        return rows

    labels = source.absorb(message, answer, features)
    if len(labels) != len(proxy):
        raise ValueError(f"{args.answer} does not answer {args.query}: {len(labels)} labels for {len(proxy)} images")
    proxy = proxy.replace(labels=labels, class_names=list(answer.class_names), epsilon=answer.total_epsilon,
                          delta=answer.delta, bytes_down=proxy.bytes_down + len(query_blob),
                          bytes_up=proxy.bytes_up + len(answer_blob))
    proxy.write(out)
    counts = np.bincount(labels[labels >= 0], minlength=len(answer.class_names))
    print(f"wrote {out}: {int((labels >= 0).sum())} of {len(labels)} images labelled over "
          f"{len(answer.class_names)} classes (per class {counts.tolist()})")
    print(f"client epsilon (ledger total): {epsilon_text(answer.total_epsilon)} at delta {answer.delta:g}; "
          f"bytes down/up: {proxy.bytes_down:,} / {proxy.bytes_up:,}")


def queries(args) -> None:
    """``queries``: ``query`` for Private kNN labels."""
    query(args, ClientKnn())


def coverage_query(args) -> None:
    """``coverage-query``: ``query`` for class-coverage labels."""
    query(args, ClassCoverage(clusters=args.clusters, whiten_dim=args.whiten_dim))


def attach_labels(args) -> None:
    """``attach-labels``: ``absorb`` of a Private kNN answer."""
    args.query, args.answer = args.queries, args.labels
    absorb(args, ClientKnn())


def attach_coverage(args) -> None:
    """``attach-coverage``: ``absorb`` of class histograms."""
    args.answer = args.histogram
    absorb(args, ClassCoverage(label_fraction=args.label_fraction))


def _open_pool(source: str):
    """(dataset, data id, absolute root or None, relative paths or None) of ``--open``."""
    data = open_source(parse_source(source))
    if data.skipped:
        print(f"skipped {len(data.skipped)} corrupt or unreadable images in {data.root or source}")
    return data.open, data.data_id, data.root, data.paths


def _encoder_spec(args):
    return spec_for_model(args.encoder, weights=args.encoder_weights, input_size=args.input_size,
                          pooling=args.pooling)


def _add_pool_arguments(p) -> None:
    """--open and the encoder options, which probe and extract share."""
    p.add_argument("--open", required=True, help="the open pool: an image folder (nested folders fine) or a data "
                   "source name (digits-lite:<client domain>[:<split seed>], domainnet:<root>, digits5:<root>, "
                   "folders:<root>, ...; its split's pool)")
    p.add_argument("--encoder", default="efficientnet_lite0", help="timm model name (default efficientnet_lite0)")
    p.add_argument("--encoder-weights", default="offline", help="offline | hub | none | path to a state dict")
    p.add_argument("--input-size", type=positive(int), help="encoder input side in pixels (default: the model's)")
    p.add_argument("--pooling", choices=("style", "avg"), default="style", help="feature pooling (default style)")


def _num_clusters(text: str):
    """argparse type of --num-clusters: ``auto`` or an integer > 0."""
    return text if text == "auto" else positive(int)(text)


def _state_dir(args, out: Path) -> Path:
    return Path(args.state) if args.state else out.parent / "cloud_state"


def build_parser() -> Parser:
    parser = Parser(prog="ecos-cloud", description="The cloud's side of ECOS: probe, then sample from the client's "
                    "scores; queries and attach-labels add Private kNN labels from the client.")
    commands = parser.add_subparsers(required=True, metavar="command", parser_class=Parser)
    state_help = "state folder written by probe (default: cloud_state/ next to --out)"

    p = commands.add_parser("extract", help="one process's share of the open-pool features (run n of them)")
    _add_pool_arguments(p)
    p.add_argument("--state", required=True, help="state folder of the later probe (shared by every rank)")
    p.add_argument("--rank", type=int, required=True, help="this process, 0 to --world-size - 1")
    p.add_argument("--world-size", type=positive(int), required=True, help="number of processes")
    p.add_argument("--batch-size", type=positive(int), default=256, help="images per encoder batch (default 256)")
    p.add_argument("--chunk-rows", type=positive(int), default=32768, help="rows per chunk of the features file, "
                   "a multiple of --batch-size; the unit of resumption and of sharding (default 32768)")
    p.set_defaults(func=extract)

    coverage = [n for n, c in SAMPLERS.items() if issubclass(c, CoverageSampler)]
    p = commands.add_parser("probe", help="features and k-means of the open pool -> centroids message")
    _add_pool_arguments(p)
    p.add_argument("--out", required=True, help="centroids message to send to the client")
    p.add_argument("--sampler", default="ecos", help=f"the sampler: a registered name or import path of a "
                   f"CoverageSampler ({', '.join(coverage)}; default ecos); the flags below and --set set its "
                   "parameters where its class takes them, and sample selects as it says")
    p.add_argument("--num-clusters", type=_num_clusters, default=100, help="K, or auto: K from the pool size, "
                   "--client-size, --noise-multiplier and --q so covered clusters clear the noise (default 100)")
    p.add_argument("--faiss-cpu", action="store_true", help="k-means and assignment on the CPU even where faiss "
                   "sees a GPU: bit-reproducible for the same --seed at any thread count")
    p.add_argument("--client-size", type=positive(int), help="with --num-clusters auto: images the client scores")
    p.add_argument("--noise-multiplier", type=float, default=8.0, help="with --num-clusters auto: the sigma the "
                   "client answers with (default 8, ecos-client respond's default)")
    p.add_argument("--q", type=positive(int), default=1, help="with --num-clusters auto: the client's q (default 1)")
    p.add_argument("--fp16", action="store_true", help="send centroids as float16")
    p.add_argument("--pca-dim", type=positive(int), help="send centroids projected to this many PCA dimensions")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    add_settings(p)
    p.add_argument("--state", help=state_help)
    p.set_defaults(func=probe)

    p = commands.add_parser("refine", help="noisy scores of one round -> the next round's centroids (a sampler of "
                            "several rounds: --set rounds=N at probe)")
    p.add_argument("--scores", required=True, help="this round's scores message from the client")
    p.add_argument("--out", required=True, help="the next round's centroids message to send to the client")
    p.add_argument("--state", help=state_help)
    p.set_defaults(func=refine)

    p = commands.add_parser("sample", help="noisy scores -> proxy file", description=SCORE_RULE)
    p.add_argument("--scores", required=True, help="scores message from the client")
    p.add_argument("--budget", type=positive(int), required=True, help="proxy size B (at most the pool size)")
    p.add_argument("--out", required=True, help="proxy file (JSON)")
    p.add_argument("--state", help=state_help)
    p.set_defaults(func=sample)

    asking = [n for n, c in LABEL_SOURCES.items() if issubclass(c, ClientExchange)]
    p = commands.add_parser("query", help="proxy file -> the query of a label source that asks the client")
    p.add_argument("--label-source", required=True, help=f"a registered name or import path ({', '.join(asking)})")
    p.add_argument("--proxy", required=True, help="proxy file written by sample")
    p.add_argument("--out", required=True, help="query message to send to the client")
    add_settings(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the query (k-means of the proxy)")
    p.add_argument("--state", help=state_help)
    p.set_defaults(func=query)

    p = commands.add_parser("absorb", help="the client's answer -> labelled proxy file (the label source is the "
                            "one the query message belongs to)")
    p.add_argument("--proxy", required=True, help="proxy file written by sample")
    p.add_argument("--query", required=True, help="the query message the answer answers")
    p.add_argument("--answer", required=True, help="answer message from the client")
    p.add_argument("--label-source", help="the label source of the query, a registered name or import path "
                   "(default: the registered one whose query messages are of the query's kind)")
    p.add_argument("--out", required=True, help="labelled proxy file (may be --proxy itself)")
    add_settings(p)
    p.add_argument("--state", help=state_help)
    p.set_defaults(func=absorb)

    p = commands.add_parser("queries", help="proxy file -> queries message (proxy features to label)")
    p.add_argument("--proxy", required=True, help="proxy file written by sample")
    p.add_argument("--out", required=True, help="queries message to send to the client")
    p.add_argument("--state", help=state_help)
    p.set_defaults(func=queries)

    p = commands.add_parser("attach-labels", help="labels message -> labelled proxy file")
    p.add_argument("--proxy", required=True, help="proxy file written by sample")
    p.add_argument("--queries", required=True, help="the queries message the labels answer")
    p.add_argument("--labels", required=True, help="labels message from the client")
    p.add_argument("--out", required=True, help="labelled proxy file (may be --proxy itself)")
    p.set_defaults(func=attach_labels)

    p = commands.add_parser("coverage-query", help="proxy file -> coverage query (proxy centroids for the client's "
                            "noisy class histograms)")
    p.add_argument("--proxy", required=True, help="proxy file written by sample")
    p.add_argument("--out", required=True, help="coverage query message to send to the client")
    p.add_argument("--clusters", type=positive(int), nargs="+", default=[10, 20, 50],
                   help="centroids of each resolution; the client releases one histogram per resolution "
                   "(default 10 20 50)")
    p.add_argument("--whiten-dim", type=positive(int), default=48, help="whitened dimensions (default 48)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--state", help=state_help)
    p.set_defaults(func=coverage_query)

    p = commands.add_parser("attach-coverage", help="class histograms message -> labelled proxy file")
    p.add_argument("--proxy", required=True, help="proxy file written by sample")
    p.add_argument("--query", required=True, help="the coverage query the histograms answer")
    p.add_argument("--histogram", required=True, help="class histograms message from the client")
    p.add_argument("--out", required=True, help="labelled proxy file (may be --proxy itself)")
    p.add_argument("--label-fraction", type=float, default=1.0, help="label only this share of the proxy, clearest "
                   "first; the rest stays unlabelled (-1) for semi-supervised training (default 1)")
    p.add_argument("--state", help=state_help)
    p.set_defaults(func=attach_coverage)
    return parser


def main(argv: list[str] | None = None) -> None:
    run(build_parser(), argv)


if __name__ == "__main__":
    main()
