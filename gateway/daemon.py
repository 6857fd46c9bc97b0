# SPDX-License-Identifier: Apache-2.0
"""The station daemon: wires store, pipeline, forwarder and bus workers, and stops cleanly.

Start: open the store (refuse to run if it cannot be written), continue the hash chain from
its head, start the forwarder, the pipeline and one worker per bus, tell systemd READY=1
and ping its watchdog while the event loop is alive.

Stop (SIGTERM, SIGINT or the caller's event): stop polling, commit what was acquired, give
the forwarder up to ``flush_timeout`` seconds to get every committed reading acknowledged
(what remains stays in the outbox for the next start), publish the offline status, close the
store. Exit status 0; 1 when the store failed (acquisition stopped rather than drop
readings).
"""

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import StationConfig
from gateway.errors import StoreError
from gateway.forward import Forwarder
from gateway.instruments import Link, channel_specs, link_opener, make_driver
from gateway.pipeline import Pipeline, rfc3339
from gateway.scheduler import BusWorker, InstrumentHealth
from gateway.stamp import Stamper
from gateway.status import write_status
from gateway.store import AsyncStore, redact
from gateway.systemd import notify, watchdog_period
from gateway.tuning import settle

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_STORE = 1


class Station:
    """One running station; `run` until `stop` is set."""

    def __init__(self, config: StationConfig, *, base_dir: Path = Path()) -> None:
        self.config = config
        self.base_dir = base_dir
        self.health: dict[str, InstrumentHealth] = {}
        self.pipeline: Pipeline | None = None
        self.forwarder: Forwarder | None = None
        self.ready = asyncio.Event()
        self._status_unwritable = False

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
        url = config.store_url
        try:
            store = await AsyncStore.open(url, station=config.station.id)
            last_seq, last_hash = await store.call(store.store.head)
            forwarded = await store.call(store.store.forwarded_seq)
        except StoreError as exc:
            log.error("cannot start: %s", exc)  # noqa: TRY400 - the message is the diagnosis
            return EXIT_STORE
        log.info(
            "store %s: %d readings, %d not yet forwarded",
            redact(url),
            last_seq,
            last_seq - forwarded,
        )
        forwarder = Forwarder(
            config.upstream,
            config.station.id,
            store,
            forwarded_seq=forwarded,
            health=self.health_snapshot,
        )
        pipeline = Pipeline(
            store,
            Stamper(config.station.id, last_seq=last_seq, last_hash=last_hash),
            batch_max=config.store.batch_max,
            batch_latency=config.store.batch_latency,
            on_commit=forwarder.notify,
        )
        self.pipeline, self.forwarder = pipeline, forwarder
        forward_task = asyncio.create_task(forwarder.run(), name="forwarder")
        pipeline_task = asyncio.create_task(pipeline.run(), name="pipeline")
        bus_tasks = [
            asyncio.create_task(worker.run(), name=f"bus {worker.bus_id}")
            for worker in self._workers(pipeline)
        ]
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        status_file = asyncio.create_task(self._status_file_loop(), name="status file")
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        settle()
        notify("READY=1\nSTATUS=polling")
        self.ready.set()
        log.info(
            "station %s running: %d buses, %d instruments",
            config.station.id,
            len(bus_tasks),
            len(config.instrument),
        )
        status = EXIT_OK
        try:
            await asyncio.wait(
                [stop_task, pipeline_task, forward_task, *bus_tasks],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            notify("STOPPING=1")
            await _cancel(*bus_tasks, stop_task)
            status = await self._finish_pipeline(pipeline, pipeline_task)
            if status == EXIT_OK and not forward_task.done():
                try:
                    async with asyncio.timeout(config.upstream.flush_timeout):
                        await forwarder.wait_forwarded(pipeline.last_seq)
                except TimeoutError:
                    log.warning(
                        "stopping with %d readings not yet acknowledged by the "
                        "broker; they stay in the outbox for the next start",
                        pipeline.last_seq - forwarder.forwarded_seq,
                    )
            await _cancel(forward_task, watchdog, status_file)
            await store.aclose()
            self._write_status("stopped")
        for task in (*bus_tasks, forward_task, watchdog, status_file):
            failure = None if task.cancelled() or not task.done() else task.exception()
            if failure is not None:  # a bug, not a fault of the field: fail loudly
                log.critical("%s failed", task.get_name(), exc_info=failure)
                raise failure
        log.info(
            "station %s stopped: %d readings committed this run, forwarded up to seq %d",
            config.station.id,
            pipeline.committed,
            forwarder.forwarded_seq,
        )
        return status

    def _workers(self, pipeline: Pipeline) -> list[BusWorker]:
        config, base_dir = self.config, self.base_dir
        workers = []
        for bus in config.bus:
            members = [
                (instrument, channel_specs(config, instrument))
                for instrument in config.instrument
                if instrument.bus == bus.id
            ]
            if not members:
                continue

            def driver_for(instrument: Any, link: Link) -> Any:  # noqa: ANN401
                return make_driver(instrument, link, base_dir)

            workers.append(
                BusWorker(
                    bus.id,
                    members,
                    open_link=link_opener(bus),
                    make_driver=driver_for,
                    submit=pipeline.submit,
                    health=self.health,
                )
            )
        return workers

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
