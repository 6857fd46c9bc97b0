# SPDX-License-Identifier: Apache-2.0
"""The ``metrogate`` command: run, demo, check-config, readings.

Exit statuses: 0 success; 1 the station file or the store is unusable (the message says
why); 2 wrong command-line usage (argparse).
"""

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.config import StationConfig, load_config
from gateway.errors import ConfigError, StoreError
from gateway.store import Store
from gateway.tuning import keep_heap

log = logging.getLogger("metrogate")


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _fail(text: str) -> int:
    sys.stderr.write(f"metrogate: {text}\n")
    return 1


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pymodbus logs an ERROR for every unanswered request; the scheduler already logs each
    # instrument's state changes (degraded, down, recovered) once, with the reason.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    # pymodbus logs an ERROR for every unanswered request; the scheduler already logs each
    # instrument's state changes (degraded, down, recovered) once, with the reason.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _load(path: str) -> StationConfig | int:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a station file; print every problem."""
    config = _load(args.file)
    if isinstance(config, int):
        return config
    _print(
        f"{args.file}: OK — station {config.station.id}, {len(config.bus)} buses, "
        f"{len(config.instrument)} instruments, "
        f"{sum(len(i.channel) for i in config.instrument)} channels, "
        f"{len(config.certificate)} certificates"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run the station daemon until SIGTERM."""
    from gateway.daemon import Station, install_signal_handlers  # noqa: PLC0415

    config = _load(args.config)
    if isinstance(config, int):
        return config

    async def main() -> int:
        stop = asyncio.Event()
        install_signal_handlers(
            stop,
            lambda: log.warning(
                "SIGHUP: configuration reload is not supported yet; "
                "restart the service to apply changes"
            ),
        )
        return await Station(config, base_dir=Path(args.config).parent).run(stop)

    return asyncio.run(main())


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the daemon against bundled simulators."""
    from gateway.demo import prepare, run_demo  # noqa: PLC0415 - it imports the simulators

    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    prepared = prepare(args.config, Path(args.data_dir))
    if isinstance(prepared, str):
        return _fail(prepared)
    path, config, data_dir = prepared
    return asyncio.run(
        run_demo(
            duration=args.duration,
            broker=args.broker,
            path=path,
            config=config,
            data_dir=data_dir,
        )
    )


def _open_for_reading(args: argparse.Namespace) -> Store | int:
    if args.config:
        config = _load(args.config)
        if isinstance(config, int):
            return config
        url, station = config.store_url, config.station.id
    else:
        url, station = args.db, ""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return _fail(f"no database at {url.removeprefix('sqlite:///')}")
    try:
        return Store.open(url, station=station, create=False)
    except StoreError as exc:
        return _fail(str(exc))


def cmd_readings(args: argparse.Namespace) -> int:
    """List stored readings with their stamps and forwarding state."""
    store = _open_for_reading(args)
    if isinstance(store, int):
        return store
    try:
        forwarded = store.forwarded_seq()
        rows = store.readings(instrument=args.instrument, limit=args.limit)
    except StoreError as exc:
        return _fail(str(exc))
    finally:
        store.close()
    rows.reverse()
    if args.json:
        for row in rows:
            reading = {key: value for key, value in row.items() if key != "body"}
            sys.stdout.write(
                orjson.dumps({"forwarded": row["seq"] <= forwarded, "reading": reading}).decode()
                + "\n"
            )
        return 0
    _print(
        f"{'seq':>8}  {'time (UTC)':<27} {'instrument/channel':<24} {'indication':>14} "
        f"{'value':>14} {'U':>10} {'unit':<5} {'fwd':<3} {'hash':<12} flags"
    )
    for row in rows:
        _print(_row_line(row, forwarded))
    _print(f"{len(rows)} readings shown; forwarded up to seq {forwarded}")
    return 0


def _row_line(row: dict[str, Any], forwarded: int) -> str:
    expanded = "-" if row["U"] is None else f"{row['U']:.3g}"
    name = f"{row['instrument']}/{row['channel']}"
    return (
        f"{row['seq']:>8}  {row['time']:<27} {name:<24} {row['indication']:>14.6g} "
        f"{row['value']:>14.8g} {expanded:>10} {row['unit']:<5} "
        f"{'yes' if row['seq'] <= forwarded else 'no':<3} {row['hash'][:12]} "
        f"{','.join(row['flags']) or 'OK'}"
    )


def cmd_status(args: argparse.Namespace) -> int:
    """Show the station's health as its daemon last wrote it."""
    from gateway.status import format_status, read_status  # noqa: PLC0415

    config = _load(args.config)
    if isinstance(config, int):
        return config
    status = read_status(config.station.data_dir)
    if status is None:
        return _fail(f"no status in {config.station.data_dir}: is the daemon running there?")
    if args.json:
        sys.stdout.write(orjson.dumps(status).decode() + "\n")
        return 0
    for line in format_status(status, stale_after=3 * config.upstream.status_interval):
        _print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(
        prog="metrogate",
        description="Instrument-integration and metrology-traceability gateway.",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the station daemon")
    run.add_argument("--config", required=True, help="station file (TOML)")
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check-config", help="validate a station file")
    check.add_argument("file")
    check.set_defaults(handler=cmd_check_config)

    demo = commands.add_parser("demo", help="run the daemon against bundled simulators")
    demo.add_argument(
        "--duration", type=float, default=None, help="stop by itself after this many seconds"
    )
    demo.add_argument(
        "--broker",
        default=None,
        help="mqtt://HOST:PORT of a broker (default: start an embedded one)",
    )
    demo.add_argument(
        "--data-dir",
        default="demo-data",
        help="where the demo keeps metrogate.db (default: ./demo-data)",
    )
    demo.add_argument("--config", default=None, help="demo station file (default: bundled)")
    demo.set_defaults(handler=cmd_demo)

    status = commands.add_parser("status", help="instrument health and outbox state")
    status.add_argument("--config", required=True, help="station file")
    status.add_argument("--json", action="store_true", help="the raw status object")
    status.set_defaults(handler=cmd_status)

    readings = commands.add_parser("readings", help="list stored readings")
    source = readings.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="station file whose store to read")
    source.add_argument("--db", help="store URL, e.g. sqlite:////var/lib/metrogate/metrogate.db")
    readings.add_argument("--instrument", default=None)
    readings.add_argument("--limit", type=int, default=20)
    readings.add_argument("--json", action="store_true", help="one JSON object per line")
    readings.set_defaults(handler=cmd_readings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metrogate`` console script."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    keep_heap()
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
