# SPDX-License-Identifier: Apache-2.0
"""The ``metrogate`` command.

Subcommands: run, demo, check-config, readings, status, keys, verify, certs, standards,
chain, collect (and calibrate, for test rigs).
Exit statuses: 0 success; 1 the station file, the key or the store is unusable (the message
says why), or ``verify`` found a problem; 2 wrong command-line usage (argparse).
"""

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

from calibration import CalibrationError
from gateway.config import StationConfig, config_warnings, load_config, problems_with_lines
from gateway.errors import ConfigError, StoreError
from gateway.pipeline import ChannelChain
from gateway.register import add_register_parsers, open_register, resolve_channel_chains
from gateway.store import Store, redact
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
    text = Path(args.file).read_text(encoding="utf-8")
    for warning in problems_with_lines(config_warnings(config), file=args.file, text=text):
        _print(f"warning: {warning}")
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
        path = Path(args.config)
        station = Station(config, base_dir=path.parent, config_path=path)
        install_signal_handlers(stop, station.request_reload)
        return await station.run(stop)

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


def cmd_budget(args: argparse.Namespace) -> int:
    """Show the GUM uncertainty budget of one stored reading."""
    from gateway.explain import explain_reading  # noqa: PLC0415

    config = _load(args.config)
    if isinstance(config, int):
        return config
    store = _open_for_reading(args)
    if isinstance(store, int):
        return store
    try:
        reading = store.reading(args.seq)
    except StoreError as exc:
        return _fail(str(exc))
    finally:
        store.close()
    if reading is None:
        return _fail(f"no reading with seq {args.seq}")
    budget, text = explain_reading(config, reading, _register_chains(config, reading))
    _print(text)
    return 0 if budget is not None else 1


def _register_chains(config: StationConfig, reading: dict[str, Any]) -> dict[str, ChannelChain]:
    """The reading's channel chain from the register, as the daemon resolves it at start.

    It carries the register's certificates that the station file does not state. A register
    that cannot be read leaves the station file's certificates alone (said on stderr).
    """
    subject = f"{reading['instrument']}/{reading['channel']}"
    at = datetime.fromisoformat(reading["time"])
    try:
        engine = open_register(config.store_url)
        try:
            return resolve_channel_chains(engine, config, at, only=subject)
        finally:
            engine.dispose()
    except (StoreError, SQLAlchemyError, CalibrationError) as exc:
        sys.stderr.write(f"metrogate: cannot read the register ({exc}): station file only\n")
        return {}


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


def _now() -> str:
    from datetime import UTC, datetime  # noqa: PLC0415 - only the key commands need it

    from gateway.pipeline import rfc3339  # noqa: PLC0415

    return rfc3339(datetime.now(UTC))


def _keys_file_text(station: str, signing: str, records: Sequence[Any]) -> list[str]:
    """The station's public keys in the collector's ``DIR/<station>.pub`` form."""
    lines = [f"# metrogate station {station}: public keys for a collector's {station}.pub"]
    current = [r for r in records if r.fingerprint == signing]
    earlier = sorted(
        (r for r in records if r.fingerprint != signing), key=lambda r: r.created, reverse=True
    )
    for record in [*current, *earlier]:
        role = "signing key" if record.fingerprint == signing else "earlier key"
        created = f", created {record.created}" if record.created else ""
        lines.append(f"# {role}, fingerprint {record.fingerprint}{created}")
        lines.append(record.public_key)
    return lines


def cmd_keys_show(args: argparse.Namespace) -> int:
    """Print the station's public keys (hex) and fingerprints, for registration upstream."""
    from gateway.keys import (  # noqa: PLC0415
        SigningKeyError,
        load_signing_key,
        private_key_path,
        read_public_keys,
    )

    config = _load(args.config)
    if isinstance(config, int):
        return config
    key_dir = config.key_dir
    if not private_key_path(key_dir).exists():
        return _fail(
            f"no signing key in {key_dir} yet: the station makes one when it first starts, "
            f"or run: metrogate keys rotate --config {args.config}"
        )
    try:
        key = load_signing_key(key_dir)
        records = read_public_keys(key_dir)
    except SigningKeyError as exc:
        return _fail(str(exc))
    if key.fingerprint not in {record.fingerprint for record in records}:
        from gateway.keys import PublicKeyRecord  # noqa: PLC0415

        records.append(PublicKeyRecord(key.public_key, key.fingerprint))
    if args.json:
        document = {
            "station": config.station.id,
            "signing": {"public_key": key.public_key, "fingerprint": key.fingerprint},
            "keys": [
                {
                    "public_key": record.public_key,
                    "fingerprint": record.fingerprint,
                    "created": record.created or None,
                    "signing": record.fingerprint == key.fingerprint,
                }
                for record in records
            ],
        }
        _print(orjson.dumps(document).decode())
        return 0
    for line in _keys_file_text(config.station.id, key.fingerprint, records):
        _print(line)
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Make a new signing key; old public keys stay, so old checkpoints still verify."""
    from gateway.keys import SigningKeyError, read_public_keys, rotate_signing_key  # noqa: PLC0415

    config = _load(args.config)
    if isinstance(config, int):
        return config
    now = _now()
    try:
        key, replaced = rotate_signing_key(config.key_dir, station=config.station.id, now=now)
        records = read_public_keys(config.key_dir)
    except SigningKeyError as exc:
        return _fail(str(exc))
    try:
        store = Store.open(config.store_url, station=config.station.id)
        try:
            store.register_keys(records, current=key.fingerprint, now=now)
        finally:
            store.close()
    except StoreError as exc:
        sys.stderr.write(
            f"metrogate: warning: {exc}; the station records the new key at its next start\n"
        )
    if replaced:
        sys.stderr.write(
            f"new signing key {key.fingerprint}, replacing {replaced}, in {key.path}; earlier "
            f"public keys stay in {config.key_dir} and the store, so what they signed still "
            "verifies. A running station signs with its earlier key until it is restarted.\n"
        )
    else:
        sys.stderr.write(f"new signing key {key.fingerprint}, in {key.path}.\n")
    sys.stderr.write("Register these public keys upstream:\n")
    for line in _keys_file_text(config.station.id, key.fingerprint, records):
        _print(line)
    return 0


def _trusted_from(path: Path, station: str) -> tuple[dict[str, Any], str]:
    """Trusted keys from a keys file, or from ``DIR/<station>.pub`` in a directory."""
    from gateway.keys import parse_public_keys, trusted_keys  # noqa: PLC0415

    file = path / f"{station}.pub" if path.is_dir() else path
    try:
        keys = parse_public_keys(file.read_text(encoding="ascii"), source=str(file))
    except FileNotFoundError:
        return {}, f"{file} (missing)"
    return trusted_keys(keys), f"{file} ({len(keys)} keys)"


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify every hash link, seq and checkpoint signature; exit 0 only if all hold."""
    from gateway.keys import SigningKeyError, read_public_keys, trusted_keys  # noqa: PLC0415
    from gateway.verify import Report, verify_file, verify_store  # noqa: PLC0415

    keys_path = Path(args.keys) if args.keys else None
    try:
        if args.file:
            path = Path(args.file)
            if not path.is_file():
                return _fail(f"no file {path}")

            def trusted_for(station: str) -> tuple[dict[str, Any], str]:
                if keys_path is None:
                    return {}, "none given (--keys)"
                return _trusted_from(keys_path, station)

            reports: list[Report] = verify_file(path, trusted_for, window=args.page_size)
        else:
            store = _open_for_reading(args)
            if isinstance(store, int):
                return store
            try:
                config = load_config(args.config) if args.config else None
                if keys_path is not None:
                    trusted, keys_source = _trusted_from(keys_path, store.station)
                else:
                    stored = [key.public_key for key in store.station_keys()]
                    keys_source = f"the store ({len(stored)} keys)"
                    if config is not None:
                        local = [r.public_key for r in read_public_keys(config.key_dir)]
                        stored += local
                        keys_source += f" and {config.key_dir} ({len(local)} keys)"
                    trusted = trusted_keys(stored)
                source = config.store_url if config is not None else args.db
                reports = [
                    verify_store(
                        store,
                        trusted,
                        source=redact(source),
                        keys_source=keys_source,
                        page_size=args.page_size,
                    )
                ]
            finally:
                store.close()
    except (ConfigError, StoreError, SigningKeyError, ValueError, OSError) as exc:
        return _fail(str(exc))
    ok = all(report.ok for report in reports)
    if args.json:
        document = {"ok": ok, "reports": [report.to_object() for report in reports]}
        _print(orjson.dumps(document).decode())
    else:
        for report in reports:
            _print_report(report)
    return 0 if ok else 1


def _print_report(report: Any) -> None:  # noqa: ANN401 - a gateway.verify.Report
    if not report.station:
        _print(f"{report.source}: {report.problem_count} unreadable lines")
    else:
        _print(f"station {report.station} ({report.source})")
        span = (
            f" (seq {report.first_seq}..{report.last_seq})" if report.last_seq is not None else ""
        )
        duplicates = f", {report.duplicates} repeats skipped" if report.duplicates else ""
        _print(f"  readings     {report.readings}{span}{duplicates}")
        _print(f"  checkpoints  {report.checkpoints}, keys from {report.keys_source}")
        if report.pruned_seq:
            _print(
                f"  retention    seq 1..{report.pruned_seq} pruned; the chain is verified "
                f"from the checkpoint signed at seq {report.pruned_seq}"
            )
        if report.last_seq is not None:
            if report.covered_seq >= report.last_seq:
                _print(f"  signed       up to seq {report.covered_seq} (the last)")
            else:
                tail = f"seq {report.covered_seq + 1}..{report.last_seq}"
                _print(
                    f"  signed       up to seq {report.covered_seq}; {tail} rest on the hash "
                    "chain alone until the next checkpoint"
                )
        _print(f"  problems     {report.problem_count}")
    for problem in report.problems:
        _print(f"    {problem.kind:<10} {problem.detail}")
    if report.problem_count > len(report.problems):
        _print(f"    ... and {report.problem_count - len(report.problems)} more")
    _print(
        "OK: every hash, link, seq and checkpoint verifies"
        if report.ok
        else f"FAILED: {report.problem_count} problems"
    )


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

    keys = commands.add_parser("keys", help="the station's signing keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    show = key_commands.add_parser(
        "show", help="print the public keys and fingerprints (a collector's <station>.pub)"
    )
    show.add_argument("--config", required=True, help="station file")
    show.add_argument("--json", action="store_true", help="as a JSON object")
    show.set_defaults(handler=cmd_keys_show)
    rotate = key_commands.add_parser(
        "rotate", help="make a new signing key; earlier public keys are kept"
    )
    rotate.add_argument("--config", required=True, help="station file")
    rotate.set_defaults(handler=cmd_keys_rotate)

    verify = commands.add_parser(
        "verify", help="check every hash link, seq and checkpoint signature"
    )
    target = verify.add_mutually_exclusive_group(required=True)
    target.add_argument("--config", help="station file whose store to verify")
    target.add_argument("--db", help="store URL, e.g. sqlite:////var/lib/metrogate/metrogate.db")
    target.add_argument(
        "--file", help="JSON Lines of published readings and checkpoints (or readings --json)"
    )
    verify.add_argument(
        "--keys",
        default=None,
        help="trusted public keys: a file (hex per line, # comments) or a directory of "
        "<station>.pub files (default: the store's own record of its keys)",
    )
    verify.add_argument("--json", action="store_true", help="the report as a JSON object")
    verify.add_argument(
        "--page-size", type=int, default=10_000, help="readings per query (memory bound)"
    )
    verify.set_defaults(handler=cmd_verify)
    _add_other_parsers(commands)
    return parser


def _add_other_parsers(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Commands defined beside what they run: the register, test rigs, the collector."""
    from gateway.collector import add_collect_parser  # noqa: PLC0415 - upstream side only
    from gateway.rig import add_calibrate_parser  # noqa: PLC0415 - test rigs only

    add_register_parsers(commands)
    add_calibrate_parser(commands)
    budget = commands.add_parser(
        "budget", help="the uncertainty budget of a stored reading (named contributions)"
    )
    budget.add_argument("--config", required=True, help="station file")
    budget.add_argument("seq", type=int, help="the reading's station sequence number")
    budget.set_defaults(handler=cmd_budget)
    add_collect_parser(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metrogate`` console script."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    keep_heap()
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
