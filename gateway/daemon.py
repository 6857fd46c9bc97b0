# SPDX-License-Identifier: Apache-2.0
"""The station daemon: wires store, pipeline, forwarder and bus workers, and stops cleanly.

Start: refuse to run when the broker's password file or TLS client key is missing or may be
read by group or others (before anything is opened or polled), open the store (refuse to run
if it cannot be written), load the station's signing key (create it at first start; refuse
one that group or others may read or write) and record its public keys in the store,
continue the hash chain from its head, start the forwarder, the checkpointer, the pipeline
and one worker per bus, tell systemd READY=1 and ping its watchdog while the event loop is
alive.

Stop (SIGTERM, SIGINT or the caller's event): stop polling, commit what was acquired, sign a
final checkpoint covering the last reading, give the forwarder up to ``flush_timeout``
seconds to get every committed reading and checkpoint acknowledged (what remains stays in
the outbox for the next start), publish the offline status, close the store. Exit status 0;
1 when a secret file, the key or the store failed (acquisition stopped rather than drop readings).

Checkpoints (`Checkpointer`) sign only committed readings, from the hashes the pipeline
hands over after each commit, and are stored in their own transaction right after. Signing
before the commit could vouch for a reading that never becomes durable: a failed commit
reuses its seqs, and that signed checkpoint would contradict the real chain for ever. A
checkpoint lost to a crash between the two transactions loses nothing: the next one covers
every reading before it through the hash chain.
"""

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy.exc import SQLAlchemyError

from calibration import CalibrationError, CertificateRecord, Standard, expiring, next_change
from gateway.checkpoints import Checkpoint, sign_checkpoint
from gateway.clock import StationClock
from gateway.config import (
    AnyBus,
    Instrument,
    StationConfig,
    check_upstream_secrets,
    format_path,
    load_config,
)
from gateway.errors import ConfigError, StoreError
from gateway.forward import Forwarder
from gateway.instruments import Link, channel_specs, link_opener, make_driver
from gateway.keys import (
    PublicKeyRecord,
    SigningKey,
    SigningKeyError,
    ensure_signing_key,
    read_public_keys,
)
from gateway.pipeline import ChannelChain, ChannelSpec, Pipeline, rfc3339
from gateway.register import load_records, load_standards, open_register, resolve_channel_chains
from gateway.scheduler import BusWorker, InstrumentHealth
from gateway.stamp import Stamped, Stamper
from gateway.status import parse_rfc3339, write_status
from gateway.store import AsyncStore, redact
from gateway.systemd import notify, watchdog_period
from gateway.tuning import settle

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STORE = 1
EXIT_KEY = 1


class _StoreState(NamedTuple):
    """Where the store stood at start: chain head, outbox marks, last checkpoint."""

    last_seq: int
    last_hash: str
    forwarded_seq: int
    covered_seq: int
    forwarded_checkpoint: int
    last_time: datetime | None


#: Sections a reload does not apply (the store, the broker and the key are open).
_RESTART_SECTIONS = ("station", "store", "upstream", "signing")
# The register's dates are looked at again at least this often (a clock stepped forward, a
# reload that brought new dates: the wait is recomputed), and a date change is acted on
# this long after its instant (timers may fire a little early).
_DATES_RECHECK = 3600.0
_DATES_MARGIN = 0.05
_DATES_RETRY = 30.0  # s: a date change the register could not be read for is retried


class _BusPlan(NamedTuple):
    """What one bus should run after a (re)load."""

    bus: AnyBus
    members: list[tuple[Instrument, dict[str, list[ChannelSpec]]]]
    signature: str


class _RunningBus(NamedTuple):
    worker: BusWorker
    task: "asyncio.Task[None]"
    signature: str


class Checkpointer:
    """Signs a checkpoint of the committed chain every `every` readings or `interval` seconds.

    `notify` is the pipeline's commit hook (it gets the committed readings, hashes and all);
    `run` signs when `every` readings are waiting, or `interval` seconds after the last
    checkpoint when any are; `checkpoint` signs now (the final one, on a clean stop). Each
    checkpoint is stored, then handed to `on_checkpoint` (the forwarder's outbox).
    """

    def __init__(
        self,
        store: AsyncStore,
        key: SigningKey,
        station: str,
        *,
        every: int,
        interval: float,
        covered_seq: int,
        head: tuple[int, str],
        on_checkpoint: Callable[[int, Checkpoint], None] = lambda _id, _checkpoint: None,
    ) -> None:
        self._store = store
        self._key = key
        self._station = station
        self._every = every
        self._interval = interval
        self._on_checkpoint = on_checkpoint
        self._head = head
        self._due = asyncio.Event()
        self._failing = False
        self.covered_seq = covered_seq
        self.last_id = 0
        self.signed = 0

    def notify(self, committed: Sequence[Stamped]) -> None:
        """Note the new head of the committed chain (the pipeline's commit hook)."""
        if committed:
            self._head = (committed[-1].seq, committed[-1].hash)
            if self._head[0] - self.covered_seq >= self._every:
                self._due.set()

    async def run(self) -> None:
        """Sign checkpoints as they fall due; runs until cancelled."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, last + self._interval - loop.time())):
                    await self._due.wait()
            self._due.clear()
            await self.checkpoint()
            last = loop.time()

    async def checkpoint(self) -> Checkpoint | None:
        """Sign and store a checkpoint of the committed head, unless one already covers it.

        A store that cannot take it is logged (once) and does not stop anything: the next
        checkpoint covers these readings too.
        """
        seq, hash_hex = self._head
        if seq <= self.covered_seq:
            return None
        checkpoint = sign_checkpoint(
            self._key.private_key,
            station=self._station,
            seq=seq,
            hash_hex=hash_hex,
            time=rfc3339(datetime.now(UTC)),
        )
        try:
            checkpoint_id = await self._store.call(self._store.store.add_checkpoint, checkpoint)
        except StoreError as exc:
            if not self._failing:
                log.warning("cannot store the checkpoint at seq %d (%s)", seq, exc)
            self._failing = True
            return None
        self._failing = False
        self.covered_seq, self.last_id = seq, checkpoint_id
        self.signed += 1
        self._on_checkpoint(checkpoint_id, checkpoint)
        return checkpoint


class Station:
    """One running station; `run` until `stop` is set."""

    def __init__(
        self,
        config: StationConfig,
        *,
        base_dir: Path = Path(),
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.base_dir = base_dir
        self.config_path = config_path
        self.health: dict[str, InstrumentHealth] = {}
        self.pipeline: Pipeline | None = None
        self.forwarder: Forwarder | None = None
        self.checkpointer: Checkpointer | None = None
        self.ready = asyncio.Event()
        self._status_unwritable = False
        self._records: list[CertificateRecord] = []
        self._standards: list[Standard] = []
        self._register_read = asyncio.Event()  # set whenever the register was read again
        self._applying = asyncio.Lock()  # a reload and a date change apply one at a time
        self.register_refreshes = 0
        self.next_register_change: datetime | None = None  # the dates loop's next instant
        self._chains_in_use: dict[str, ChannelChain] = {}
        self.clock = StationClock()
        self.reloads = 0
        self._buses: dict[str, _RunningBus] = {}
        self._reload_requested = asyncio.Event()
        self._bus_failed = asyncio.Event()
        self._store: AsyncStore | None = None
        self._failed_buses: list[asyncio.Task[None]] = []

    def health_snapshot(self) -> dict[str, Any]:
        """Instrument health as published on the status topic."""
        return {name: health.snapshot() for name, health in self.health.items()}

    def status(self, state: str) -> dict[str, Any]:
        """The station's status: health, chain head, outbox, broker connection."""
        pipeline, forwarder = self.pipeline, self.forwarder
        return {
            "station": self.config.station.id,
            "state": state,
            "time": rfc3339(datetime.now(UTC)),
            "pid": os.getpid(),
            "last_seq": pipeline.last_seq if pipeline else None,
            "backlog": pipeline.backlog if pipeline else None,
            "forwarded_seq": forwarder.forwarded_seq if forwarder else None,
            "broker_connected": bool(forwarder and forwarder.connected),
            "instruments": self.health_snapshot(),
            **self.details(),
        }

    def details(self) -> dict[str, Any]:
        """What the status file and the status topic add to health: alarm, acquisition, expiry."""
        pipeline = self.pipeline
        alarm = pipeline.alarm if pipeline else None
        return {
            "acquisition": "paused" if alarm else "running",
            "alarm": alarm,
            "clock": self.clock.snapshot(),
            **self.register_snapshot(),
        }

    def register_snapshot(self) -> dict[str, Any]:
        """Register certificates about to expire, soonest first, and its next date.

        Those still valid that expire within ``[register] expiry_warning_days``; an expired
        link shows on the readings themselves (CHAIN_BROKEN). ``register_dates`` says when
        the chains will next be resolved again (a validity beginning or ending) and how often
        that happened.
        """
        now = datetime.now(UTC)
        days = self.config.register_section.expiry_warning_days
        soon = expiring(self._records, now, days)
        changes_at = self.next_register_change
        return {
            "expiring": [
                {"certificate": r.number, "subject": r.subject, "expires": rfc3339(r.expires)}
                for r in soon
            ],
            "register_dates": {
                "next_change": rfc3339(changes_at) if changes_at else None,
                "chains_resolved_again": self.register_refreshes,
            },
        }

    def _write_status(self, state: str) -> None:
        if not write_status(self.config.station.data_dir, self.status(state)):
            if not self._status_unwritable:
                log.warning("cannot write the status file in %s", self.config.station.data_dir)
            self._status_unwritable = True

    async def _status_file_loop(self) -> None:
        while True:
            self._write_status("running")
            await asyncio.sleep(self.config.upstream.status_interval)

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set or the store fails; return the exit status."""
        config = self.config
        if not self._secrets_usable():
            return EXIT_KEY
        opened = await self._open_store()
        if opened is None:
            return EXIT_STORE
        store, state = opened
        key = await self._signing_key(store)
        if key is None:
            await store.aclose()
            return EXIT_KEY
        forwarder, checkpointer, pipeline = self._assemble(store, state, key)
        self.pipeline, self.forwarder, self.checkpointer = pipeline, forwarder, checkpointer
        self._store = store
        await self._use(await self._chains(store))
        forward_task = asyncio.create_task(forwarder.run(), name="forwarder")
        checkpoint_task = asyncio.create_task(checkpointer.run(), name="checkpointer")
        pipeline_task = asyncio.create_task(pipeline.run(), name="pipeline")
        services = [
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._status_file_loop(), name="status file"),
            asyncio.create_task(self._reload_loop(), name="reload"),
            asyncio.create_task(self._register_dates_loop(store), name="register dates"),
            asyncio.create_task(self._retention_loop(store), name="retention"),
        ]
        waits = [
            asyncio.create_task(stop.wait(), name="stop"),
            asyncio.create_task(self._bus_failed.wait(), name="bus failed"),
        ]
        settle()
        notify("READY=1\nSTATUS=polling")
        self.ready.set()
        log.info(
            "station %s running: %d buses, %d instruments",
            config.station.id,
            len(self._buses),
            len(config.instrument),
        )
        status = EXIT_OK
        try:
            await asyncio.wait(
                [*waits, pipeline_task, forward_task, checkpoint_task],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            notify("STOPPING=1")
            await _cancel(services[2], services[3], *waits)  # no reload, no re-resolving
            bus_tasks = [running.task for running in self._buses.values()]
            await self._stop_buses(list(self._buses))
            status = await self._finish_pipeline(pipeline, pipeline_task)
            await _cancel(checkpoint_task)
            if status == EXIT_OK:
                await checkpointer.checkpoint()  # the final one: it covers the last reading
                if not forward_task.done():
                    await self._flush(forwarder, pipeline.last_seq, checkpointer.last_id)
            await _cancel(forward_task, *services)
            await store.aclose()
            self._write_status("stopped")
        for task in (*bus_tasks, *self._failed_buses, forward_task, checkpoint_task, *services):
            failure = None if task.cancelled() or not task.done() else task.exception()
            if failure is not None:  # a bug, not a fault of the field: fail loudly
                log.critical("%s failed", task.get_name(), exc_info=failure)
                raise failure
        log.info(
            "station %s stopped: %d readings committed this run, forwarded up to seq %d; "
            "%d checkpoints signed, the last at seq %d",
            config.station.id,
            pipeline.committed,
            forwarder.forwarded_seq,
            checkpointer.signed,
            checkpointer.covered_seq,
        )
        return status

    async def _retention_loop(self, store: AsyncStore) -> None:
        """Prune forwarded readings older than ``[store] retain_days``, every prune_interval."""
        settings = self.config.store
        if settings.retain_days is None:
            return
        while True:
            await self.prune(store, settings.retain_days)
            await asyncio.sleep(settings.prune_interval)

    async def prune(self, store: AsyncStore, retain_days: float) -> int:
        """Delete what retention allows now (`gateway.store.Store.prune`); log what went."""
        cutoff = rfc3339(datetime.now(UTC) - timedelta(days=retain_days))
        try:
            deleted, anchor = await store.call(store.store.prune, cutoff)
        except StoreError as exc:
            log.warning("retention: cannot prune (%s); retrying in the next round", exc)
            return 0
        if deleted:
            log.info(
                "retention: deleted %d forwarded readings older than %s, up to seq %d (the "
                "checkpoint signed there anchors the kept chain)",
                deleted,
                cutoff,
                anchor,
            )
        return deleted

    # -- buses and reload ------------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload the station file soon (the SIGHUP handler)."""
        self._reload_requested.set()

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Read the station file again and apply what changed in buses and instruments.

        A bus whose settings, instruments, channels, certificates or chains changed is
        stopped after its poll in progress (whose readings are committed as usual) and
        started again with the new settings; removed buses stop, new ones start; every other
        bus keeps polling undisturbed. The pipeline, the seq and the hash chain go on: a
        reload neither loses nor repeats a reading. Changes to [station], [store],
        [upstream] and [signing] take effect at the next restart (said in the log). A file
        with problems changes nothing: each problem is logged with its file, line and key.
        A register that cannot be read keeps the chains in use (`_chains`). Returns whether
        the new configuration was applied.
        """
        path, store = self.config_path, self._store
        if path is None or store is None:
            log.warning("SIGHUP: no station file to reload (started without one)")
            return False
        try:
            new = load_config(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error(  # noqa: TRY400 - the problem is the diagnosis, not a traceback
                    "reload refused, still running the previous configuration: %s", problem
                )
            return False
        old = self.config
        fixed = [name for name in _RESTART_SECTIONS if getattr(new, name) != getattr(old, name)]
        if fixed:
            log.warning(
                "reload: [%s] changed; that takes effect at the next restart",
                "], [".join(fixed),
            )
        async with self._applying:
            self.config = old.model_copy(
                update={
                    "bus": new.bus,
                    "instrument": new.instrument,
                    "certificate": new.certificate,
                    "register_section": new.register_section,
                }
            )
            changes = await self._use(await self._chains(store))
        self.reloads += 1
        log.info("reload %d applied: %s", self.reloads, changes)
        return True

    async def _register_dates_loop(self, store: AsyncStore) -> None:
        """Resolve the chains again when a certificate of the register starts or stops being valid.

        A chain resolved at start ends where its first link expires; when the register
        already holds that link's renewal (the lab's weights recalibrated, the certificate
        imported ahead of the day), the chain resolved at the change takes it, with no
        reload. Buses whose chains changed restart after their poll in progress (as on a
        reload); the others keep polling. Readings acquired between the instant of the
        change and the new chains (well under a second and a bus restart) are flagged
        ``CHAIN_BROKEN``: not traceable rather than traceable through a link not yet
        applied. A register that cannot be read at that moment keeps the chains in use
        (broken from the old link's expiry, so flagged) and is tried again every
        `_DATES_RETRY` seconds.
        """
        overdue: datetime | None = None  # a change the register could not be read for
        while True:
            now = datetime.now(UTC)
            changes_at = overdue or next_change(self._records, self._standards, now)
            self.next_register_change = changes_at
            wait = _DATES_RETRY if overdue else _DATES_RECHECK
            if changes_at is not None and overdue is None:
                wait = min(wait, (changes_at - now).total_seconds() + _DATES_MARGIN)
            try:
                async with asyncio.timeout(wait):
                    await self._register_read.wait()  # read again (reload): new dates
                self._register_read.clear()
                overdue = None
                continue
            except TimeoutError:
                pass
            if changes_at is None or datetime.now(UTC) < changes_at:
                continue  # the periodic look, or the clock moved: compute again
            async with self._applying:
                chains = await self._read_chains(store)
                if chains is None:  # keep the chains in use; try again shortly
                    overdue = changes_at
                    continue
                changes = await self._use(chains)
            self._register_read.clear()  # read just now, by this loop
            overdue = None
            self.register_refreshes += 1
            log.info(
                "register: a certificate's validity began or ended at %s; chains resolved "
                "again: %s",
                rfc3339(changes_at),
                changes,
            )

    def _plan(self, config: StationConfig, chains: dict[str, ChannelChain]) -> dict[str, _BusPlan]:
        """What each bus should run: its workers' members and a signature to compare."""
        plans: dict[str, _BusPlan] = {}
        certificates = {cert.id: cert for cert in config.certificate}
        for bus in config.bus:
            instruments = [i for i in config.instrument if i.bus == bus.id]
            if not instruments:
                continue
            members = [(i, channel_specs(config, i, chains)) for i in instruments]
            used = [
                (
                    channel.certificate,
                    certificates.get(channel.certificate or ""),
                    chains.get(f"{i.id}/{channel.id}"),
                )
                for i in instruments
                for channel in i.channel
            ]
            signature = repr((bus, instruments, used))
            plans[bus.id] = _BusPlan(bus, members, signature)
        return plans

    async def _use(self, chains: dict[str, ChannelChain]) -> str:
        """Run the buses of the current configuration with `chains`; describe the changes."""
        self._chains_in_use = chains
        return await self._apply(self._plan(self.config, chains))

    async def _apply(self, plans: dict[str, _BusPlan]) -> str:
        """Start, stop and restart bus workers so that they match `plans`; describe it."""
        running = self._buses
        removed = [bus for bus in running if bus not in plans]
        changed = [
            bus
            for bus in running
            if bus in plans and running[bus].signature != plans[bus].signature
        ]
        added = [bus for bus in plans if bus not in running]
        await self._stop_buses([*removed, *changed])
        kept = {i.id for plan in plans.values() for i, _specs in plan.members}
        for name in [name for name in self.health if name not in kept]:
            del self.health[name]
        for bus in [*changed, *added]:
            self._start_bus(plans[bus])
        unchanged = len(plans) - len(changed) - len(added)
        return (
            f"buses added {added or '-'}, removed {removed or '-'}, restarted {changed or '-'}, "
            f"{unchanged} unchanged"
        )

    def _start_bus(self, plan: _BusPlan) -> None:
        pipeline, base_dir = self.pipeline, self.base_dir
        assert pipeline is not None  # noqa: S101 - buses start after the pipeline

        def driver_for(instrument: Any, link: Link) -> Any:  # noqa: ANN401
            return make_driver(instrument, link, base_dir)

        worker = BusWorker(
            plan.bus.id,
            plan.members,
            open_link=link_opener(plan.bus),
            make_driver=driver_for,
            submit=pipeline.submit,
            health=self.health,
            clock=self.clock.now,
        )
        task = asyncio.create_task(worker.run(), name=f"bus {plan.bus.id}")
        task.add_done_callback(self._bus_done)
        self._buses[plan.bus.id] = _RunningBus(worker, task, plan.signature)

    def _bus_done(self, task: asyncio.Task[None]) -> None:
        """A bus task ended by itself: only a bug does that; stop the station (re-raised)."""
        if not task.cancelled() and task.exception() is not None:
            self._failed_buses.append(task)
            self._bus_failed.set()

    async def _stop_buses(self, buses: Sequence[str], within: float = 15.0) -> None:
        """Stop `buses` after their polls in progress; cancel what is still busy `within`."""
        stopping = [self._buses.pop(bus) for bus in buses]
        for running in stopping:
            running.worker.stop()
        tasks = [running.task for running in stopping]
        if tasks:
            _done, stuck = await asyncio.wait(tasks, timeout=within)
            for task in stuck:
                log.warning(
                    "%s did not stop within %.0f s; cancelling it", task.get_name(), within
                )
            await _cancel(*stuck)

    def _assemble(
        self, store: AsyncStore, state: _StoreState, key: SigningKey
    ) -> tuple[Forwarder, Checkpointer, Pipeline]:
        """The forwarder, checkpointer and pipeline, continuing from where the store stands."""
        config = self.config
        last_seq, last_hash = state.last_seq, state.last_hash
        self.clock = StationClock(state.last_time)
        forwarder = Forwarder(
            config.upstream,
            config.station.id,
            store,
            forwarded_seq=state.forwarded_seq,
            forwarded_checkpoint=state.forwarded_checkpoint,
            health=self.health_snapshot,
            details=self.details,
        )
        checkpointer = Checkpointer(
            store,
            key,
            config.station.id,
            every=config.signing.checkpoint_every,
            interval=config.signing.checkpoint_interval,
            covered_seq=state.covered_seq,
            head=(last_seq, last_hash),
            on_checkpoint=forwarder.notify_checkpoint,
        )

        def committed(stamped: Sequence[Stamped]) -> None:
            forwarder.notify(stamped)
            checkpointer.notify(stamped)

        pipeline = Pipeline(
            store,
            Stamper(config.station.id, last_seq=last_seq, last_hash=last_hash),
            batch_max=config.store.batch_max,
            batch_latency=config.store.batch_latency,
            on_commit=committed,
        )
        return forwarder, checkpointer, pipeline

    def _secrets_usable(self) -> bool:
        """Check the broker's secret files as `metrogate check-config` does; log each problem."""
        problems = list(check_upstream_secrets(self.config.upstream))
        for where, message in problems:
            log.error("cannot start: %s: %s", format_path(where), message)
        return not problems

    async def _open_store(self) -> tuple[AsyncStore, _StoreState] | None:
        """Open the store; read where the chain, the outboxes and the checkpoints stand."""
        url = self.config.store_url
        try:
            store = await AsyncStore.open(url, station=self.config.station.id)
        except StoreError as exc:
            log.error("cannot start: %s", exc)  # noqa: TRY400 - the message is the diagnosis
            return None
        try:
            last_seq, last_hash = await store.call(store.store.head)
            head = await store.call(store.store.reading, last_seq) if last_seq else None
            state = _StoreState(
                last_time=parse_rfc3339(head.get("time")) if head else None,
                last_seq=last_seq,
                last_hash=last_hash,
                forwarded_seq=await store.call(store.store.forwarded_seq),
                covered_seq=await store.call(store.store.last_checkpoint_seq),
                forwarded_checkpoint=await store.call(store.store.checkpoints_forwarded),
            )
        except StoreError as exc:
            log.error("cannot start: %s", exc)  # noqa: TRY400
            await store.aclose()
            return None
        log.info(
            "store %s: %d readings, %d not yet forwarded",
            redact(url),
            last_seq,
            last_seq - state.forwarded_seq,
        )
        return store, state

    async def _flush(self, forwarder: Forwarder, last_seq: int, last_checkpoint: int) -> None:
        """Give the forwarder `flush_timeout` seconds to get everything acknowledged."""
        try:
            async with asyncio.timeout(self.config.upstream.flush_timeout):
                await forwarder.wait_forwarded(last_seq)
                await forwarder.wait_checkpoints_forwarded(last_checkpoint)
        except TimeoutError:
            log.warning(
                "stopping with %d readings (or checkpoints) not yet acknowledged by "
                "the broker; they stay in the outbox for the next start",
                last_seq - forwarder.forwarded_seq,
            )

    async def _signing_key(self, store: AsyncStore) -> SigningKey | None:
        """Load (at first start create) the signing key and record the station's keys.

        Returns None, having said why, when the key must not be used or cannot be recorded.
        """
        key_dir = self.config.key_dir
        try:
            key, created = ensure_signing_key(
                key_dir, station=self.config.station.id, now=rfc3339(datetime.now(UTC))
            )
            await self._record_keys(store, key)
        except (SigningKeyError, StoreError) as exc:
            log.error("cannot start: %s", exc)  # noqa: TRY400 - the message is the diagnosis
            return None
        if created:
            log.warning(
                "created the station's signing key %s (fingerprint %s); register its public "
                "key upstream: metrogate keys show --config FILE",
                key.path,
                key.fingerprint,
            )
        return key

    async def _record_keys(self, store: AsyncStore, key: SigningKey) -> None:
        """Record the key directory's public keys in the store, `key` as the signing one."""
        try:
            known = read_public_keys(self.config.key_dir)
        except SigningKeyError as exc:
            log.warning("%s; recording only the signing key in the store", exc)
            known = []
        if key.fingerprint not in {record.fingerprint for record in known}:
            known.append(PublicKeyRecord(key.public_key, key.fingerprint))
        before = {stored.fingerprint for stored in await store.call(store.store.station_keys)}
        now = rfc3339(datetime.now(UTC))
        await store.call(
            lambda: store.store.register_keys(known, current=key.fingerprint, now=now)
        )
        if before and key.fingerprint not in before:
            log.warning(
                "signing with key %s, which the store did not know (it knew %s): register the "
                "new public key upstream (metrogate keys show)",
                key.fingerprint,
                ", ".join(sorted(before)),
            )

    async def _chains(
        self, store: AsyncStore, at: datetime | None = None
    ) -> dict[str, ChannelChain]:
        """Resolve each channel's calibration chain from the register, on the store thread.

        At start and at every reload (`at`, now unless given): readings are then checked
        against each chain's validity window. A register that cannot be read keeps the
        chains in use, said in the log: none at start (every chain unchecked, the certificate
        alone), and a reload never turns a checked chain into an unchecked one; acquisition
        does not wait for it.
        """
        chains = await self._read_chains(store, at)
        if chains is None:
            if self._chains_in_use:
                log.warning(
                    "the register cannot be read; the chains in use are kept (new channels' "
                    "chains are unchecked until it can)"
                )
            self._without_register()
            return self._chains_in_use
        return chains

    async def _read_chains(
        self, store: AsyncStore, at: datetime | None = None
    ) -> dict[str, ChannelChain] | None:
        """`_chains`, or None (logged) when the register cannot be read."""
        config = self.config
        now = datetime.now(UTC) if at is None else at

        def resolve() -> tuple[dict[str, ChannelChain], list[CertificateRecord], list[Standard]]:
            engine = open_register(config.store_url)
            try:
                chains = resolve_channel_chains(engine, config, now)
                return chains, load_records(engine), list(load_standards(engine).values())
            finally:
                engine.dispose()

        try:
            chains, self._records, self._standards = await store.call(resolve)
            self._register_read.set()
        except (StoreError, SQLAlchemyError, CalibrationError) as exc:
            log.warning("cannot read the register (%s)", exc)
            return None
        for subject, chain in chains.items():
            links = " → ".join(chain.certificate_ids)
            if not chain.checked:
                log.info("channel %s: chain %s (not in the register: unchecked)", subject, links)
            elif chain.broken:
                log.warning("channel %s: chain %s BROKEN (%s)", subject, links, chain.problem)
            else:
                until = chain.valid_until.isoformat() if chain.valid_until else "open end"
                log.info("channel %s: chain %s valid until %s", subject, links, until)
            if chain.covered_range is not None:
                low, high = chain.covered_range
                log.info("channel %s: the chain covers %g to %g", subject, low, high)
        return chains

    def _without_register(self) -> None:
        """Log each channel whose certificate only the (unreadable) register could give."""
        in_file = {cert.id for cert in self.config.certificate}
        for instrument in self.config.instrument:
            for channel in instrument.channel:
                if channel.certificate is not None and channel.certificate not in in_file:
                    log.error(
                        "channel %s/%s: certificate %s is not in the station file and the "
                        "register cannot be read: its readings are flagged NO_CERTIFICATE",
                        instrument.id,
                        channel.id,
                        channel.certificate,
                    )

    @staticmethod
    async def _finish_pipeline(pipeline: Pipeline, task: asyncio.Task[None]) -> int:
        """Commit what was acquired; return EXIT_STORE if the store failed."""
        if task.done():
            exc = task.exception()
            if isinstance(exc, StoreError):
                log.error("acquisition stopped: %s", exc)
                return EXIT_STORE
            if exc is not None:
                raise exc
        await pipeline.close()
        try:
            await task
        except StoreError as exc:
            log.error("acquisition stopped: %s", exc)  # noqa: TRY400
            return EXIT_STORE
        return EXIT_OK

    @staticmethod
    async def _watchdog() -> None:
        period = watchdog_period()
        if period is None:
            return
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(period)


async def _cancel(*tasks: asyncio.Task[Any], within: float = 10.0) -> None:
    """Cancel `tasks` and wait for them, at most `within` seconds.

    Their failures stay on the tasks, to be inspected. A task still running then is named
    in the log and left behind, so that a misbehaving library cannot keep the station from
    committing, flushing and closing its store.
    """
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _done, stuck = await asyncio.wait(tasks, timeout=within)
    for task in stuck:
        log.error("task %s did not stop within %.0f s of being cancelled", task.get_name(), within)


def install_signal_handlers(stop: asyncio.Event, on_reload: Callable[[], None]) -> None:
    """Install the daemon's signal handlers.

    SIGTERM and SIGINT stop the station; SIGHUP calls `on_reload`; SIGUSR1 logs what every
    task is waiting for (for a station that seems stuck).
    """
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    loop.add_signal_handler(signal.SIGUSR1, log_tasks)


def log_tasks() -> None:
    """Log every asyncio task with the line it is waiting at."""
    for task in asyncio.all_tasks():
        frames = task.get_stack()
        where = " <- ".join(
            f"{frame.f_code.co_name}:{frame.f_lineno}" for frame in reversed(frames)
        )
        log.warning("task %s: %s", task.get_name(), where or "(not started)")
