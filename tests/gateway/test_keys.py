# SPDX-License-Identifier: Apache-2.0
"""Station keys: made at first start (0600), refused when exposed, shown, rotated."""

import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.checkpoints import check_signature, fingerprint, sign_checkpoint
from gateway.cli import main
from gateway.keys import (
    SigningKeyError,
    ensure_signing_key,
    load_signing_key,
    parse_public_keys,
    private_key_path,
    read_public_keys,
    rotate_signing_key,
    trusted_keys,
)
from gateway.stamp import Stamper
from gateway.store import Store
from tests.gateway.factories import measured

NOW = "2026-11-27T00:00:00.000000Z"
HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture
def station_file(tmp_path: Path) -> Path:
    path = tmp_path / "station.toml"
    path.write_text(f'[station]\nid = "lab-1"\ndata_dir = "{tmp_path / "data"}"\n')
    return path


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("permissive_umask")
def test_first_start_makes_a_key_readable_by_its_owner_only(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key, created = ensure_signing_key(key_dir, station="lab-1", now=NOW)
    assert created
    assert stat.S_IMODE(private_key_path(key_dir).stat().st_mode) == 0o600  # despite umask 0
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert private_key_path(key_dir).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert HEX64.match(key.public_key)
    assert key.fingerprint == fingerprint(key.public_key)
    public_file = key_dir / f"{key.fingerprint}.pub"
    assert parse_public_keys(public_file.read_text()) == [key.public_key]
    assert f"created {NOW}" in public_file.read_text()
    again, created_again = ensure_signing_key(key_dir, station="lab-1", now="later")
    assert not created_again
    assert again.public_key == key.public_key
    assert sorted(p.name for p in key_dir.iterdir()) == sorted(["signing.key", public_file.name])


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o700])
def test_an_exposed_private_key_is_refused_naming_file_and_mode(tmp_path: Path, mode: int) -> None:
    key_dir = tmp_path / "keys"
    ensure_signing_key(key_dir, station="lab-1", now=NOW)
    path = private_key_path(key_dir)
    path.chmod(mode)
    if mode == 0o700:  # the owner's own bits are the owner's business
        load_signing_key(key_dir)
        return
    with pytest.raises(SigningKeyError) as caught:
        ensure_signing_key(key_dir, station="lab-1", now=NOW)
    assert str(caught.value) == (
        f"{path} has mode {mode:04o}; a private key must be readable and writable by its "
        f"owner only (chmod 600 {path})"
    )


def test_a_malformed_private_key_is_refused(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    path = private_key_path(key_dir)
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(SigningKeyError, match=re.escape(f"{path} is not an unencrypted PEM")):
        load_signing_key(key_dir)


async def test_the_daemon_refuses_an_exposed_key_and_exits_1(
    tmp_path: Path, station_file: Path
) -> None:
    import asyncio  # noqa: PLC0415

    key_dir = tmp_path / "data" / "keys"
    ensure_signing_key(key_dir, station="lab-1", now=NOW)
    private_key_path(key_dir).chmod(0o644)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "run", "--config", str(station_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _out, err = await process.communicate()
    text = err.decode()
    assert process.returncode == 1, text
    assert f"cannot start: {private_key_path(key_dir)} has mode 0644" in text
    assert "Traceback" not in text
    store = Store.open(f"sqlite:///{tmp_path / 'data' / 'metrogate.db'}", station="lab-1")
    assert store.count() == 0  # refused before acquiring anything
    store.close()


def test_keys_show_prints_a_collector_keys_file(
    station_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "show", "--config", str(station_file)]) == 1
    assert "no signing key in" in capsys.readouterr().err
    key, _ = ensure_signing_key(tmp_path / "data" / "keys", station="lab-1", now=NOW)
    assert main(["keys", "show", "--config", str(station_file)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "# metrogate station lab-1: public keys for a collector's lab-1.pub",
        f"# signing key, fingerprint {key.fingerprint}, created {NOW}",
        key.public_key,
    ]
    # Exactly the collector's form: every non-comment line is one hex key.
    assert [line for line in out.splitlines() if not line.startswith("#")] == [key.public_key]
    assert parse_public_keys(out) == [key.public_key]
    assert main(["keys", "show", "--config", str(station_file), "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["signing"] == {"public_key": key.public_key, "fingerprint": key.fingerprint}
    assert shown["keys"] == [
        {
            "public_key": key.public_key,
            "fingerprint": key.fingerprint,
            "created": NOW,
            "signing": True,
        }
    ]


def test_rotation_keeps_old_checkpoints_verifiable(
    station_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_dir, url = tmp_path / "data" / "keys", f"sqlite:///{tmp_path / 'data' / 'metrogate.db'}"
    first, _ = ensure_signing_key(key_dir, station="lab-1", now=NOW)
    store = Store.open(url, station="lab-1")
    store.register_keys(read_public_keys(key_dir), current=first.fingerprint, now=NOW)
    stamper = Stamper("lab-1")

    def commit_and_sign() -> None:
        batch = stamper.stamp([measured(float(i)) for i in range(5)])
        store.append(batch)
        stamper.advance(batch)
        signer = load_signing_key(key_dir).private_key
        last = batch[-1]
        store.add_checkpoint(
            sign_checkpoint(signer, station="lab-1", seq=last.seq, hash_hex=last.hash, time=NOW)
        )

    commit_and_sign()  # seq 1..5, checkpoint at 5 with the first key
    assert main(["keys", "rotate", "--config", str(station_file)]) == 0
    commit_and_sign()  # seq 6..10, checkpoint at 10 with the new one
    rotated = load_signing_key(key_dir)
    assert rotated.fingerprint != first.fingerprint
    assert {r.fingerprint for r in read_public_keys(key_dir)} == {
        first.fingerprint,
        rotated.fingerprint,
    }
    keys = store.station_keys()
    assert {k.fingerprint: k.retired is None for k in keys} == {
        first.fingerprint: False,
        rotated.fingerprint: True,
    }
    checkpoints = store.pending_checkpoints(0, 10)
    assert [(c.seq, c.key) for _, c in checkpoints] == [
        (5, first.fingerprint),
        (10, rotated.fingerprint),
    ]
    store.close()
    shown = capsys.readouterr().out  # what `keys rotate` printed: both keys, new one first
    assert parse_public_keys(shown) == [rotated.public_key, first.public_key]
    every_key = trusted_keys(parse_public_keys(shown))
    assert all(check_signature(c, every_key) is None for _, c in checkpoints)

    assert main(["verify", "--config", str(station_file)]) == 0  # keys from the store
    assert "OK" in capsys.readouterr().out
    keys_file = tmp_path / "lab-1.pub"
    keys_file.write_text(shown)
    assert main(["verify", "--db", url, "--keys", str(keys_file)]) == 0
    capsys.readouterr()
    keys_file.write_text(rotated.public_key + "\n")  # forgetting the old key upstream
    assert main(["verify", "--db", url, "--keys", str(keys_file), "--json"]) == 1
    report = orjson.loads(capsys.readouterr().out)["reports"][0]
    assert [(p["seq"], p["kind"]) for p in report["problems"]] == [(5, "key")]


def test_rotation_refuses_to_hide_an_exposed_key(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    ensure_signing_key(key_dir, station="lab-1", now=NOW)
    private_key_path(key_dir).chmod(0o644)
    with pytest.raises(SigningKeyError, match="has mode 0644"):
        rotate_signing_key(key_dir, station="lab-1", now=NOW)


def test_a_lost_public_file_is_written_again(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key, _ = ensure_signing_key(key_dir, station="lab-1", now=NOW)
    (key_dir / f"{key.fingerprint}.pub").unlink()
    ensure_signing_key(key_dir, station="lab-1", now=NOW)
    assert [r.public_key for r in read_public_keys(key_dir)] == [key.public_key]


def test_keys_files_accept_comments_and_refuse_anything_else() -> None:
    public = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    from gateway.checkpoints import public_key_hex  # noqa: PLC0415

    hex_key = public_key_hex(public)
    text = f"# a comment\n\n{hex_key.upper()}  # trailing comment\n{hex_key}\n"
    assert parse_public_keys(text) == [hex_key]
    with pytest.raises(ValueError, match=r"keys\.pub:2: an Ed25519 public key is 64 hex"):
        parse_public_keys(f"{hex_key}\nnot-a-key\n", source="keys.pub")
