# SPDX-License-Identifier: Apache-2.0
"""``metrogate verify``: check a whole store, or a file of published readings, in one pass.

What is checked, for each reading in seq order, with `gateway.stamp.verify_chain` (the
subscriber's own check): its content against its hash, its ``prev_hash`` against the hash of
the reading before, and that seqs follow on. Around that, what only a streaming verifier sees:

* a missing seq — ``gap`` (a deleted reading);
* two readings claiming one seq — ``inserted`` (the one the next reading links to is kept);
* a row of the store holding the reading stamped with another seq — ``order`` (readings
  reordered or renumbered; runs of rows shifted alike are reported once);
* each checkpoint: its signature with a trusted key (``signature``, ``key``) and its hash
  against the reading at its seq (``checkpoint``: that reading, or one before it, was
  rewritten — even when whoever did it recomputed every hash after it).

Every problem names the seq where it shows and its kind (`gateway.stamp.ChainProblem`).

Memory stays bounded by the page size however long the history: readings arrive a page at a
time (`gateway.store.Store.reading_pages`), at most `window` readings wait out of order, and
the hashes of the last `window` verified readings are kept for late checkpoints.
"""

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.checkpoints import (
    Checkpoint,
    CheckpointFormatError,
    check_signature,
    parse_checkpoint,
)
from gateway.stamp import GENESIS_HASH, ChainProblem, verify_chain
from gateway.store import Store

PAGE_SIZE = 10_000
#: Problems kept for the report (all are counted); the first ones are what a person reads.
MAX_LISTED = 1000


@dataclass(frozen=True, slots=True)
class Report:
    """What `verify_store` or `verify_file` found for one station.

    Attributes:
        station: the station id.
        source: what was verified (a redacted store URL or a file path).
        keys_source: where the trusted public keys came from.
        readings: readings verified in the chain (each seq once).
        duplicates: exact copies skipped (delivery is at-least-once).
        checkpoints: checkpoints examined.
        first_seq: the lowest seq verified, or None when there were no readings.
        last_seq: the highest seq verified, or None.
        covered_seq: the highest seq vouched for by a checkpoint that verified (0: none).
        problem_count: every problem found.
        problems: the first `MAX_LISTED` problems, in seq order.
        pruned_seq: readings up to this seq were deleted by the station's retention; the
            chain is verified from the signed checkpoint at this seq (0: nothing pruned).
    """

    station: str
    source: str
    keys_source: str
    readings: int
    duplicates: int
    checkpoints: int
    first_seq: int | None
    last_seq: int | None
    covered_seq: int
    problem_count: int
    problems: tuple[ChainProblem, ...]
    pruned_seq: int = 0

    @property
    def ok(self) -> bool:
        """True when everything verified."""
        return self.problem_count == 0

    def to_object(self) -> dict[str, Any]:
        """The report as a JSON-ready object (``metrogate verify --json``)."""
        return {
            "station": self.station,
            "source": self.source,
            "keys": self.keys_source,
            "ok": self.ok,
            "readings": self.readings,
            "duplicates": self.duplicates,
            "checkpoints": self.checkpoints,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "covered_seq": self.covered_seq,
            "pruned_seq": self.pruned_seq,
            "problem_count": self.problem_count,
            "problems": [
                {"seq": p.seq, "kind": p.kind, "detail": p.detail} for p in self.problems
            ],
        }


class _Run:
    """Consecutive store rows whose reading's seq is off by the same amount."""

    __slots__ = ("end", "offset", "start")

    def __init__(self, row_seq: int, offset: int) -> None:
        self.start = self.end = row_seq
        self.offset = offset


class ChainVerifier:
    """Verifies one station's readings and checkpoints, fed in (roughly) seq order.

    Feed checkpoints before or after the readings they cover (within `window` readings),
    then call `finish`.
    """

    def __init__(
        self,
        station: str,
        trusted: Mapping[str, Ed25519PublicKey],
        *,
        window: int = PAGE_SIZE,
        start_seq: int = 0,
        start_hash: str | None = None,
        max_listed: int = MAX_LISTED,
    ) -> None:
        """Start verifying.

        Args:
            station: the station whose readings these are.
            trusted: public keys by fingerprint (`gateway.keys.trusted_keys`).
            window: how many readings may wait for a missing seq before it is declared
                deleted, and how many verified hashes are kept for late checkpoints.
            start_seq: the seq before the first reading expected (0 for a whole store; for
                a file that starts mid-stream, its lowest seq minus one: that first
                reading's link cannot be checked, and earlier checkpoints are only checked
                for their signature).
            start_hash: the hash of reading `start_seq`, when known from a trusted source
                (the signed checkpoint retention pruned up to): the first reading's link is
                then checked against it.
            max_listed: how many problems to keep for the report.
        """
        self.station = station
        self._trusted = trusted
        self._window = window
        self._max_listed = max_listed
        self._start_seq = start_seq
        self._start_hash = start_hash
        self._prev_seq = start_seq
        self._prev_hash = GENESIS_HASH if start_hash is None else start_hash
        self._link_known = start_seq == 0 or start_hash is not None
        self._pending: dict[int, list[Mapping[str, Any]]] = {}
        self._pending_count = 0
        self._recent: dict[int, str] = {}
        self._recent_order: collections.deque[int] = collections.deque()
        self._waiting: dict[int, list[tuple[Checkpoint, bool]]] = {}
        # The signatures of the last `window` checkpoints, to skip repeats (at-least-once).
        self._seen_signatures: set[str] = set()
        self._seen_order: collections.deque[str] = collections.deque()
        self._run: _Run | None = None
        self.problems: list[ChainProblem] = []
        self.problem_count = 0
        self.readings = 0
        self.duplicates = 0
        self.checkpoints = 0
        self.first_seq: int | None = None
        self.covered_seq = 0

    # -- readings -----------------------------------------------------------------------

    def add_reading(self, reading: Mapping[str, Any], *, row_seq: int | None = None) -> None:
        """Take one published reading object (``hash`` included).

        Args:
            reading: the reading.
            row_seq: for a store, the seq of the row it was read from.
        """
        seq, claimed = reading.get("seq"), reading.get("hash")
        if type(seq) is not int or not isinstance(claimed, str):
            where = self._prev_seq + 1 if row_seq is None else row_seq
            self.add_problem(
                ChainProblem(where, "malformed", f"seq {where}: no integer seq or hash")
            )
            return
        if row_seq is not None:
            self._check_position(row_seq, seq)
        if seq < 1:
            self.add_problem(ChainProblem(seq, "malformed", f"seq {seq}: seqs start at 1"))
            return
        if seq <= self._prev_seq:
            if self._recent.get(seq) == claimed:
                self.duplicates += 1
            elif seq > self._start_seq:
                self.add_problem(
                    ChainProblem(
                        seq,
                        "inserted",
                        f"seq {seq}: a second reading claims seq {seq} (id "
                        f"{reading.get('id')}) after the chain went past it: inserted",
                    )
                )
            return
        bucket = self._pending.get(seq)
        if bucket is None:
            self._pending[seq] = [reading]
        elif any(other.get("hash") == claimed for other in bucket):
            self.duplicates += 1
            return
        else:
            bucket.append(reading)
        self._pending_count += 1
        self._drain(final=False)

    def _drain(self, *, final: bool) -> None:
        pending = self._pending
        while pending:
            following = self._prev_seq + 1
            bucket = pending.get(following)
            patient = not final and self._pending_count <= self._window
            if bucket is not None:
                # A reading is taken once the next one is here: a second reading claiming its
                # seq (an insertion) has then been seen, and the next one's prev_hash shows
                # which of the two the chain runs through.
                if following + 1 not in pending and patient:
                    return
                del pending[following]
                self._pending_count -= len(bucket)
                self._accept(self._choose(bucket, pending.get(following + 1, [])))
                continue
            if patient:
                return
            self._gap(following, min(pending) - 1)

    def _choose(
        self, bucket: list[Mapping[str, Any]], successors: list[Mapping[str, Any]]
    ) -> Mapping[str, Any]:
        """Of readings claiming one seq, keep the one the chain goes through."""
        if len(bucket) == 1:
            return bucket[0]
        linked = {successor.get("prev_hash") for successor in successors}
        chosen = next((r for r in bucket if r.get("hash") in linked), None)
        if chosen is None and self._link_known:
            chosen = next((r for r in bucket if r.get("prev_hash") == self._prev_hash), None)
        chosen = bucket[0] if chosen is None else chosen
        for other in bucket:
            if other is not chosen:
                seq = other["seq"]
                self.add_problem(
                    ChainProblem(
                        seq,
                        "inserted",
                        f"seq {seq}: a second reading claims seq {seq} (id {other.get('id')}); "
                        "the chain runs through the other: inserted",
                    )
                )
        return chosen

    def _accept(self, reading: Mapping[str, Any]) -> None:
        seq: int = reading["seq"]
        claimed: str = reading["hash"]
        # After a gap the missing reading's hash is unknown: check this one's content only.
        prev_hash = self._prev_hash if self._link_known else str(reading.get("prev_hash"))
        for problem in verify_chain((reading,), prev_seq=seq - 1, prev_hash=prev_hash):
            self.add_problem(problem)
        self._prev_seq, self._prev_hash, self._link_known = seq, claimed, True
        self.readings += 1
        if self.first_seq is None:
            self.first_seq = seq
        self._recent[seq] = claimed
        self._recent_order.append(seq)
        if len(self._recent_order) > self._window:
            del self._recent[self._recent_order.popleft()]
        for checkpoint, signed in self._waiting.pop(seq, ()):
            self._compare(checkpoint, claimed, signed=signed)

    def _gap(self, first: int, last: int) -> None:
        after = last + 1
        if first == last:
            detail = f"seq {first}: missing (seq {after} follows seq {first - 1}): deleted"
        else:
            detail = (
                f"seq {first}..{last}: {last - first + 1} readings missing (seq {after} "
                f"follows seq {first - 1}): deleted"
            )
        self.add_problem(ChainProblem(first, "gap", detail))
        for seq in sorted(s for s in self._waiting if first <= s <= last):
            for checkpoint, _signed in self._waiting.pop(seq):
                self._missing_for(checkpoint)
        self._prev_seq, self._link_known = last, False

    def _check_position(self, row_seq: int, seq: int) -> None:
        offset = row_seq - seq
        run = self._run
        if run is not None and run.offset == offset and run.end == row_seq - 1:
            run.end = row_seq
            return
        self._flush_run()
        if offset:
            self._run = _Run(row_seq, offset)

    def _flush_run(self) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        if run.start == run.end:
            detail = (
                f"seq {run.start}: the row holds the reading stamped seq "
                f"{run.start - run.offset}: reordered"
            )
        else:
            detail = (
                f"seq {run.start}..{run.end}: the rows hold the readings stamped seq "
                f"{run.start - run.offset}..{run.end - run.offset}: renumbered"
            )
        self.add_problem(ChainProblem(run.start, "order", detail))

    # -- checkpoints --------------------------------------------------------------------

    def add_checkpoint(self, given: Checkpoint | Mapping[str, Any]) -> None:
        """Take one checkpoint (as stored, or a published object)."""
        if isinstance(given, Checkpoint):
            checkpoint = given
        else:
            try:
                checkpoint = parse_checkpoint(given)
            except CheckpointFormatError as exc:
                seq = given.get("seq")
                where = seq if type(seq) is int else 0
                self.add_problem(
                    ChainProblem(where, "malformed", f"checkpoint at seq {where}: {exc}")
                )
                return
        if checkpoint.signature in self._seen_signatures:
            self.duplicates += 1
            return
        self._seen_signatures.add(checkpoint.signature)
        self._seen_order.append(checkpoint.signature)
        if len(self._seen_order) > self._window:
            self._seen_signatures.discard(self._seen_order.popleft())
        self.checkpoints += 1
        seq = checkpoint.seq
        signed = True
        if checkpoint.station != self.station:
            signed = False
            self.add_problem(
                ChainProblem(
                    seq,
                    "checkpoint",
                    f"seq {seq}: a checkpoint of station {checkpoint.station!r} among the "
                    f"readings of {self.station!r}",
                )
            )
        failure = check_signature(checkpoint, self._trusted)
        if failure is not None:
            signed = False
            kind, sentence = failure
            self.add_problem(
                ChainProblem(seq, kind, f"seq {seq}: checkpoint {checkpoint.time}: {sentence}")
            )
        if seq <= self._start_seq:
            return  # before what this source holds: only its signature can be checked
        if seq <= self._prev_seq:
            known = self._recent.get(seq)
            if known is None:
                self._missing_for(checkpoint)
            else:
                self._compare(checkpoint, known, signed=signed)
            return
        self._waiting.setdefault(seq, []).append((checkpoint, signed))

    def _compare(self, checkpoint: Checkpoint, reading_hash: str, *, signed: bool) -> None:
        seq = checkpoint.seq
        if checkpoint.hash != reading_hash:
            self.add_problem(
                ChainProblem(
                    seq,
                    "checkpoint",
                    f"seq {seq}: the checkpoint signed {checkpoint.time} vouches for hash "
                    f"{checkpoint.hash[:16]}…, the reading has {reading_hash[:16]}…: it or a "
                    "reading before it was rewritten",
                )
            )
        elif signed:
            self.covered_seq = max(self.covered_seq, seq)

    def _missing_for(self, checkpoint: Checkpoint) -> None:
        seq = checkpoint.seq
        self.add_problem(
            ChainProblem(
                seq,
                "checkpoint",
                f"seq {seq}: the checkpoint signed {checkpoint.time} vouches for seq {seq}, "
                "which is not there: deleted",
            )
        )

    # -- the end ------------------------------------------------------------------------

    def add_problem(self, problem: ChainProblem) -> None:
        """Count a problem found outside the verifier (e.g. an unreadable stored row)."""
        self.problem_count += 1
        if len(self.problems) < self._max_listed:
            self.problems.append(problem)

    def finish(self, *, source: str, keys_source: str) -> Report:
        """Declare what is still missing and return the report."""
        self._flush_run()
        self._drain(final=True)
        last_seq = self._prev_seq if self.readings else None
        for seq in sorted(self._waiting):
            for checkpoint, _signed in self._waiting.pop(seq):
                self.add_problem(
                    ChainProblem(
                        seq,
                        "checkpoint",
                        f"seq {seq}: the checkpoint signed {checkpoint.time} vouches for "
                        f"readings up to seq {seq}, but they end at seq {last_seq or 0}: "
                        "deleted",
                    )
                )
        return Report(
            station=self.station,
            source=source,
            keys_source=keys_source,
            readings=self.readings,
            duplicates=self.duplicates,
            checkpoints=self.checkpoints,
            first_seq=self.first_seq,
            last_seq=last_seq,
            covered_seq=self.covered_seq,
            problem_count=self.problem_count,
            problems=tuple(sorted(self.problems, key=lambda p: p.seq)),
            pruned_seq=self._start_seq if self._start_hash is not None else 0,
        )


def _stored_reading(row_seq: int, hash_hex: str, body: bytes) -> dict[str, Any] | ChainProblem:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ChainProblem(row_seq, "malformed", f"seq {row_seq}: the stored body is not JSON")
    if not isinstance(document, dict) or "hash" in document:
        return ChainProblem(
            row_seq, "malformed", f"seq {row_seq}: the stored body is not a reading object"
        )
    document["hash"] = hash_hex
    return document


def verify_store(
    store: Store,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    source: str,
    keys_source: str,
    page_size: int = PAGE_SIZE,
) -> Report:
    """Verify every reading and checkpoint of `store`, a page at a time.

    Args:
        store: an open store.
        trusted: the public keys checkpoints may be signed with, by fingerprint.
        source: how to name the store in the report (a redacted URL).
        keys_source: how to name where `trusted` came from.
        page_size: readings (and checkpoints) per query.
    """
    anchor = store.pruned_anchor()
    pruned = store.pruned_seq()
    if pruned and anchor is None:
        verifier = ChainVerifier(store.station, trusted, window=page_size, start_seq=pruned)
        verifier.add_problem(
            ChainProblem(
                pruned,
                "checkpoint",
                f"seq {pruned}: retention pruned up to seq {pruned}, but the checkpoint it "
                "kept there is missing: the first kept reading's link cannot be checked",
            )
        )
    else:
        verifier = ChainVerifier(
            store.station,
            trusted,
            window=page_size,
            start_seq=pruned,
            start_hash=None if anchor is None else anchor.hash,
        )
    checkpoints: Iterator[Checkpoint] = itertools.chain.from_iterable(
        store.checkpoint_pages(page_size)
    )
    upcoming = next(checkpoints, None)
    for page in store.reading_pages(page_size):
        high = page[-1].seq
        while upcoming is not None and upcoming.seq <= high:
            verifier.add_checkpoint(upcoming)
            upcoming = next(checkpoints, None)
        for row in page:
            reading = _stored_reading(row.seq, row.hash, row.body)
            if isinstance(reading, ChainProblem):
                verifier.add_problem(reading)
            else:
                verifier.add_reading(reading, row_seq=row.seq)
    while upcoming is not None:
        verifier.add_checkpoint(upcoming)
        upcoming = next(checkpoints, None)
    return verifier.finish(source=source, keys_source=keys_source)


def _published_objects(value: Any) -> Iterator[dict[str, Any]]:  # noqa: ANN401 - JSON
    """The readings and checkpoints in one line of a file, whatever the wrapping."""
    if isinstance(value, list):
        for item in value:
            yield from _published_objects(item)
    elif isinstance(value, dict):
        if set(value) == {"forwarded", "reading"} and isinstance(value["reading"], dict):
            yield value["reading"]  # a line of `metrogate readings --json`
        else:
            yield value


def _file_objects(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, object) for each object in a JSON Lines file; None: unreadable line."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                decoded = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield number, None
                continue
            for item in _published_objects(decoded):
                yield number, item


def verify_file(
    path: Path,
    trusted_for: Callable[[str], tuple[Mapping[str, Ed25519PublicKey], str]],
    *,
    window: int = PAGE_SIZE,
) -> list[Report]:
    """Verify a JSON Lines file of published readings and checkpoints, per station.

    Each line holds a reading object, a checkpoint object, a JSON array of them (an MQTT
    payload as received) or a line of ``metrogate readings --json``; order does not matter
    within `window` readings, and repeats (at-least-once delivery) are skipped. The file is
    read twice: first for its checkpoints (held in memory: one per ``checkpoint_every``
    readings) and where each station's readings start (a subscriber may have started
    mid-stream), then for the readings.

    Args:
        path: the file.
        trusted_for: given a station id, its trusted keys and where they came from.
        window: see `ChainVerifier`.

    Returns:
        One report per station, in order of station id; unreadable lines are reported as a
        station named ``""``.
    """
    starts: dict[str, int] = {}
    checkpoints: dict[str, list[dict[str, Any]]] = {}
    unreadable: list[ChainProblem] = []
    for number, item in _file_objects(path):
        station = None if item is None else item.get("station")
        if item is None or not isinstance(station, str):
            unreadable.append(
                ChainProblem(0, "malformed", f"{path}:{number}: not a reading or checkpoint")
            )
        elif "signature" in item:
            checkpoints.setdefault(station, []).append(item)
        elif type(seq := item.get("seq")) is int:
            starts[station] = min(starts.get(station, seq), seq)
    verifiers: dict[str, tuple[ChainVerifier, str]] = {}
    for station in sorted(starts.keys() | checkpoints.keys()):
        trusted, keys_source = trusted_for(station)
        verifier = ChainVerifier(
            station, trusted, window=window, start_seq=max(starts.get(station, 1) - 1, 0)
        )
        for checkpoint in checkpoints.pop(station, ()):
            verifier.add_checkpoint(checkpoint)
        verifiers[station] = (verifier, keys_source)
    for _number, item in _file_objects(path):
        if item is None or "signature" in item:
            continue
        station = item.get("station")
        entry = verifiers.get(station) if isinstance(station, str) else None
        if entry is not None:
            entry[0].add_reading(item)
    reports = [
        verifier.finish(source=str(path), keys_source=keys_source)
        for verifier, keys_source in verifiers.values()
    ]
    if unreadable:
        reports.insert(0, _unreadable_report(path, unreadable))
    return reports


def _unreadable_report(path: Path, problems: Iterable[ChainProblem]) -> Report:
    listed = list(problems)
    return Report(
        station="",
        source=str(path),
        keys_source="",
        readings=0,
        duplicates=0,
        checkpoints=0,
        first_seq=None,
        last_seq=None,
        covered_seq=0,
        problem_count=len(listed),
        problems=tuple(listed[:MAX_LISTED]),
    )
