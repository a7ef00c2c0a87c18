"""The privacy ledger under attack: concurrent processes, kills mid-write, hand-edited or corrupt files."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecos_lightning.client.ledger import (ledger_epsilon, ledger_snapshot, open_ledger, read_ledger,
                                   record_releases)
from ecos_lightning.protocol.privacy import gaussian_release, releases_epsilon

SIGMA = 2.0
BUDGET = 2.5  # one sigma-2 release costs 1.99 at delta 1e-5; two compose to 2.94 > 2.5

# A client in miniature: check and record under the lock, then write the message; report what it did.
RELEASER = textwrap.dedent("""
    import hashlib, os, sys, time
    from pathlib import Path
    from ecos_lightning.files import atomic_write_bytes
    from ecos_lightning.client.ledger import open_ledger
    from ecos_lightning.protocol.privacy import gaussian_release

    ledger, out, start, sigma, budget, tries = sys.argv[1:7]
    while time.time() < float(start):
        time.sleep(0.001)
    for i in range(int(tries)):
        blob = os.urandom(64)
        try:
            with open_ledger(ledger, max_epsilon=float(budget)) as book:
                book.record(hashlib.sha256(blob).hexdigest(), [gaussian_release(float(sigma))])
        except ValueError as exc:
            assert "refused" in str(exc), exc
            continue
        atomic_write_bytes(Path(out) / f"{os.getpid()}-{i}.msg", blob)
""")


def released(out) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in out.glob("*.msg")}


def recorded(path) -> list[str]:
    return [entry["hash"] for entry in read_ledger(path)["entries"]]


def run_releasers(tmp_path, processes: int, sigma: float, budget: float, tries: int):
    ledger, out = tmp_path / "ledger.json", tmp_path / "out"
    out.mkdir()
    start = time.time() + 3.0  # every process waits for the same moment, then races
    procs = [subprocess.Popen([sys.executable, "-c", RELEASER, str(ledger), str(out), str(start), str(sigma),
                               str(budget), str(tries)]) for _ in range(processes)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    return ledger, out


def test_concurrent_processes_never_overspend_and_record_every_release(tmp_path):
    ledger, out = run_releasers(tmp_path, processes=4, sigma=6.0, budget=1.0, tries=3)
    hashes = recorded(ledger)
    assert sorted(hashes) == sorted(released(out)) and len(set(hashes)) == len(hashes)
    assert ledger_epsilon(ledger) <= 1.0
    # as many sigma-6 releases as fit in epsilon 1 were made: the budget was spent, not lost to a race
    fitting = max(n for n in range(1, 25) if releases_epsilon([gaussian_release(6.0)] * n, 1e-5) <= 1.0)
    assert len(hashes) == fitting


def test_two_racing_releases_of_which_only_one_fits(tmp_path):
    ledger, out = run_releasers(tmp_path, processes=4, sigma=SIGMA, budget=BUDGET, tries=1)
    assert len(recorded(ledger)) == 1 and set(recorded(ledger)) == released(out)
    assert ledger_epsilon(ledger) <= BUDGET


def test_a_kill_at_any_moment_leaves_a_valid_ledger_holding_every_written_release(tmp_path):
    ledger, out = tmp_path / "ledger.json", tmp_path / "out"
    out.mkdir()
    for pause in (0.0, 0.002, 0.005, 0.01, 0.02, 0.04):
        written = len(list(out.glob("*.msg")))
        proc = subprocess.Popen([sys.executable, "-c", RELEASER, str(ledger), str(out), "0", "50", "1e9", "100000"])
        deadline = time.time() + 120
        while len(list(out.glob("*.msg"))) <= written and time.time() < deadline:
            time.sleep(0.002)  # kill only once it is releasing
        time.sleep(pause)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        hashes = recorded(ledger)  # parses and validates: never half-written
        assert released(out) <= set(hashes)  # a message is never out without its charge
        assert len(hashes) <= len(released(out)) + 1  # at most the one release in flight lost its message
    assert len(recorded(ledger)) >= 6


def test_a_ledger_has_one_delta_and_one_budget(tmp_path):
    path = tmp_path / "ledger.json"
    record_releases(path, "a1", [gaussian_release(SIGMA)], delta=1e-5, max_epsilon=BUDGET)
    with pytest.raises(ValueError, match="composes epsilon at delta 1e-05, not 0.01"):
        record_releases(path, "a2", [gaussian_release(SIGMA)], delta=0.01, max_epsilon=BUDGET)
    with pytest.raises(ValueError, match="may not raise it to 3.3"):
        record_releases(path, "a2", [gaussian_release(SIGMA)], max_epsilon=3.3)
    with pytest.raises(ValueError, match="refused"):  # no --max-epsilon: the stored budget still holds
        record_releases(path, "a2", [gaussian_release(SIGMA)])
    assert recorded(path) == ["a1"] and read_ledger(path)["delta"] == 1e-5
    # the same release again costs nothing; a lower budget for one call is fine
    assert record_releases(path, "a1", [gaussian_release(SIGMA)], max_epsilon=2.2)[2] is True
    with open_ledger(path) as book:
        with pytest.raises(ValueError, match="can only be lowered"):
            book.set_budget(4.0)
        with pytest.raises(ValueError, match="already spent"):
            book.set_budget(1.0)
        book.set_budget(2.2)
    assert read_ledger(path)["max_epsilon"] == 2.2


def test_a_snapshot_is_read_only_and_creates_nothing(tmp_path):
    book = ledger_snapshot(tmp_path / "sub" / "ledger.json", max_epsilon=1.0)
    assert book.check([gaussian_release(8.0)]) == pytest.approx(0.434, abs=1e-3)
    with pytest.raises(RuntimeError, match="read-only"):
        book.record("ab", [gaussian_release(8.0)])
    assert list(tmp_path.iterdir()) == []


def valid_ledger() -> dict:
    return {"version": 2, "delta": 1e-5, "max_epsilon": 3.0, "epsilon": 2.08,
            "entries": [{"hash": "ab12", "time": "2026-01-01T00:00:00+00:00", "what": ["x"], "epsilon": 2.08,
                         "releases": [gaussian_release(SIGMA, what="x")]}]}


def release_field(field, value):
    def edit(ledger):
        ledger["entries"][0]["releases"][0][field] = value
    return edit


CORRUPTIONS = {
    "count is a string": release_field("count", "1"),
    "count is 0": release_field("count", 0),
    "count is -1": release_field("count", -1),
    "count is a bool": release_field("count", True),
    "count is a float": release_field("count", 1.0),
    "noise is negative": release_field("noise_multiplier", -1.0),
    "sampling rate above 1": release_field("sampling_rate", 1.5),
    "unknown mechanism": release_field("mechanism", "laplace"),
    "extra release key": release_field("epsilon_override", 0.0),
    "entries is an object": lambda ledger: ledger.update(entries={}),
    "no entries": lambda ledger: ledger.pop("entries"),
    "empty releases": lambda ledger: ledger["entries"][0].update(releases=[]),
    "delta out of range": lambda ledger: ledger.update(delta=1.5),
    "budget negative": lambda ledger: ledger.update(max_epsilon=-1),
    "unknown version": lambda ledger: ledger.update(version=3),
    "extra top-level key": lambda ledger: ledger.update(note="x"),
    "hash not a string": lambda ledger: ledger["entries"][0].update(hash=5),
    "repeated hash": lambda ledger: ledger["entries"].append(dict(ledger["entries"][0])),
    "a list": lambda ledger: ledger.clear(),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_ledgers_are_refused_never_reset(tmp_path, name):
    path = tmp_path / "ledger.json"
    ledger = valid_ledger()
    CORRUPTIONS[name](ledger)
    path.write_text(json.dumps([] if name == "a list" else ledger))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="is corrupt or unreadable .*never reset automatically"):
        record_releases(path, "cd34", [gaussian_release(8.0)])
    with pytest.raises(ValueError, match="corrupt"):
        ledger_snapshot(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("raw", [b'{"version": 2, "count": 1e400}', b'{"count": 1' + b"0" * 400 + b"}",
                                 b"{\"version\": NaN}", b"\xff\xfe garbage", b'{"version": 2', b"[" * 100000])
def test_unparseable_ledgers_are_refused(tmp_path, raw):
    path = tmp_path / "ledger.json"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        read_ledger(path)


def test_huge_counts_and_budgets_are_refused(tmp_path):
    for edit in (release_field("count", 10**400), lambda ledger: ledger.update(max_epsilon=10**400)):
        ledger = valid_ledger()
        edit(ledger)
        (tmp_path / "ledger.json").write_text(json.dumps(ledger))
        with pytest.raises(ValueError, match="corrupt"):
            read_ledger(tmp_path / "ledger.json")


def test_a_version_1_ledger_is_read_and_upgraded_on_the_next_release(tmp_path):
    path = tmp_path / "ledger.json"
    v1 = valid_ledger()
    v1.update(version=1)
    del v1["max_epsilon"]
    path.write_text(json.dumps(v1))
    record_releases(path, "cd34", [gaussian_release(8.0)], max_epsilon=5.0)
    ledger = read_ledger(path)
    assert ledger["version"] == 2 and ledger["max_epsilon"] == 5.0 and recorded(path) == ["ab12", "cd34"]


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=8), lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from([("version",), ("delta",), ("max_epsilon",), ("epsilon",), ("entries",),
                             ("entries", 0), ("entries", 0, "hash"), ("entries", 0, "releases"),
                             ("entries", 0, "releases", 0), ("entries", 0, "releases", 0, "count"),
                             ("entries", 0, "releases", 0, "noise_multiplier"),
                             ("entries", 0, "releases", 0, "sampling_rate")]), value=JSON)
def test_fuzzed_ledgers_are_valid_or_refused_with_one_error(tmp_path, path, value):
    ledger = valid_ledger()
    target = ledger
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    file = tmp_path / "ledger.json"
    file.write_text(json.dumps(ledger))
    try:
        book = ledger_snapshot(file)
    except ValueError as exc:
        assert "corrupt" in str(exc) and len(str(exc).splitlines()) == 1
        return
    assert book.epsilon >= 0 and all(r["count"] >= 1 for r in book.releases)


def test_a_ledger_path_that_is_not_a_regular_file_is_refused(tmp_path):
    (tmp_path / "ledger.json").mkdir()
    with pytest.raises(ValueError, match="not a regular file"):
        record_releases(tmp_path / "ledger.json", "ab", [gaussian_release(8.0)])


def test_every_name_of_a_ledger_shares_one_lock_and_one_budget(tmp_path):
    real, link = tmp_path / "real.json", tmp_path / "link.json"
    record_releases(real, "a1", [gaussian_release(SIGMA)], max_epsilon=BUDGET)
    link.symlink_to(real)
    with pytest.raises(ValueError, match="refused"):
        record_releases(link, "a2", [gaussian_release(SIGMA)], max_epsilon=BUDGET)
    assert link.is_symlink() and recorded(real) == ["a1"]
    os.link(real, tmp_path / "hard.json")
    with pytest.raises(ValueError, match="other hard links"):
        record_releases(tmp_path / "hard.json", "a2", [gaussian_release(8.0)])


def test_an_entry_without_releases_is_never_written(tmp_path):
    with pytest.raises(ValueError, match="at least one release"):
        record_releases(tmp_path / "ledger.json", "a1", [])
    assert not (tmp_path / "ledger.json").exists()


def test_a_ledger_edited_to_version_1_keeps_no_way_around_its_budget(tmp_path):
    path = tmp_path / "ledger.json"
    ledger = valid_ledger()
    ledger["version"] = 1  # still holds max_epsilon: not a version 1 ledger
    path.write_text(json.dumps(ledger))
    with pytest.raises(ValueError, match="corrupt"):
        record_releases(path, "cd34", [gaussian_release(SIGMA)])


@pytest.mark.parametrize("field, value", [("noise_multiplier", 1e-300), ("noise_multiplier", 1e300),
                                          ("count", 10**9)])
def test_releases_the_accountant_cannot_compose_are_refused_quickly(tmp_path, field, value):
    ledger = valid_ledger()
    release_field(field, value)(ledger)
    (tmp_path / "ledger.json").write_text(json.dumps(ledger))
    with pytest.raises(ValueError, match="corrupt"):
        read_ledger(tmp_path / "ledger.json")


def test_the_ledger_gives_the_rdp_epsilon_beside_the_pld_one(tmp_path):
    path = tmp_path / "ledger.json"
    releases = [gaussian_release(8.0, what="a"), gaussian_release(4.0, count=3, what="b")]
    record_releases(path, "h1", releases[:1])
    record_releases(path, "h2", releases[1:])
    ledger = read_ledger(path)
    assert ledger["epsilon"] == pytest.approx(releases_epsilon(releases, 1e-5), rel=1e-12)
    assert ledger["epsilon_rdp"] == pytest.approx(releases_epsilon(releases, 1e-5, "rdp"), rel=1e-12)
    assert ledger_epsilon(path, accountant="rdp") == ledger["epsilon_rdp"] > ledger["epsilon"]
    assert ledger_snapshot(path).epsilon_rdp == ledger["epsilon_rdp"]
