# SPDX-License-Identifier: Apache-2.0
"""raw → corrected → stamped → stored: correction, honest flags, durable commit."""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from calibration import CertificateRecord, Standard, resolve_certificate_chain, resolve_chain
from gateway.pipeline import ChannelChain, ChannelSpec, Pipeline, measure
from gateway.stamp import Stamper, verify_chain
from gateway.store import AsyncStore
from tests.gateway.factories import NOW, acquired, balance_certificate, spec

STANDARDS = [
    Standard(id="NIM-KG", name="national kilogram", level="national-primary"),
    Standard(id="E2-SET", name="E2 weights", level="enterprise-highest"),
]


def register_records(*, upstream_until: datetime) -> list[CertificateRecord]:
    """The balance calibrated with the lab's E2 weights, calibrated by the institute."""
    return [
        CertificateRecord(
            number="CAL-2026-0117",
            kind="calibration",
            issuer="Provincial Institute",
            accreditation="CNAS L1234",
            route="ILAC-MRA accredited lab",
            issued=datetime(2026, 1, 10, tzinfo=UTC),
            valid_until=datetime(2027, 1, 9, tzinfo=UTC),
            subject="balance-1",
            made_with=("E2-SET",),
        ),
        CertificateRecord(
            number="C-E2",
            kind="calibration",
            issuer="Zhejiang Institute of Metrology",
            accreditation="(国)法计(2020)01001号",
            route="legal metrology institute",
            issued=datetime(2026, 1, 1, tzinfo=UTC),
            valid_until=upstream_until,
            subject="E2-SET",
            made_with=("NIM-KG",),
        ),
    ]


def chained_spec(records: list[CertificateRecord], *, at: datetime = NOW) -> ChannelSpec:
    result = resolve_chain("balance-1/mass", at, records=records, standards=STANDARDS)
    chain = ChannelChain.from_result("CAL-2026-0117", result)
    return replace(spec(balance_certificate()), chain=chain)


def test_traceable_reading_is_corrected_with_its_uncertainty() -> None:
    # DOMAIN.md §1 case 2 without the repeatability term: C(750.224 g) = -0.15004 g.
    channel = spec(balance_certificate())
    [reading] = measure([acquired(750.224, channel)])
    assert reading.value == pytest.approx(750.0739552, abs=1e-9)
    assert reading.indication == 750.224
    # DOMAIN's u_c = 0.034176 g includes s_mean = 0.005099 g; without it:
    assert reading.u == pytest.approx((0.034176**2 - 0.005099**2) ** 0.5, rel=1e-4)
    assert reading.u is not None
    assert reading.expanded_u == pytest.approx(2 * reading.u)
    assert reading.k == 2.0
    assert reading.certificate == "CAL-2026-0117"
    assert reading.flags == ()
    assert reading.time == "2026-06-01T12:00:00.000000Z"


def test_no_certificate_is_flagged_and_uncorrected() -> None:
    [reading] = measure([acquired(750.0, spec(None))])
    assert reading.value == 750.0
    assert (reading.u, reading.expanded_u, reading.k) == (None, None, None)
    assert reading.flags == ("NO_CERTIFICATE",)


def test_expired_certificate_still_corrects_but_is_flagged() -> None:
    channel = spec(balance_certificate(valid_until=datetime(2026, 5, 1, tzinfo=UTC)))
    [reading] = measure([acquired(750.224, channel, time=NOW)])
    assert reading.flags == ("CERT_EXPIRED",)
    assert reading.value == pytest.approx(750.0739552, abs=1e-9)


def test_not_yet_valid_certificate_is_flagged() -> None:
    channel = spec(balance_certificate())
    [reading] = measure([acquired(750.0, channel, time=datetime(2025, 1, 1, tzinfo=UTC))])
    assert reading.flags == ("CERT_NOT_YET_VALID",)


def test_out_of_range_is_never_extrapolated() -> None:
    channel = spec(balance_certificate())
    [reading] = measure([acquired(1200.0, channel)])
    assert reading.value == 1200.0
    assert reading.u is None
    assert reading.flags == ("OUT_OF_CALIBRATED_RANGE",)
    assert reading.certificate == "CAL-2026-0117"


def test_unit_mismatch_is_not_corrected() -> None:
    channel = spec(balance_certificate())
    [reading] = measure([acquired(0.75, channel, unit="kg")])
    assert reading.unit == "kg"
    assert reading.value == 0.75
    assert reading.flags == ("UNIT_MISMATCH",)


def test_unstable_is_flagged_alongside_others() -> None:
    channel = spec(balance_certificate())
    readings = measure(
        [acquired(750.0, channel, stable=False), acquired(1500.0, channel, stable=False)]
    )
    assert readings[0].flags == ("UNSTABLE",)
    assert readings[0].u is not None
    assert readings[1].flags == ("OUT_OF_CALIBRATED_RANGE", "UNSTABLE")


def test_order_is_kept_across_channels() -> None:
    with_cert, without = spec(balance_certificate()), spec(None)
    batch = [acquired(600.0 + i, with_cert if i % 2 else without) for i in range(20)]
    assert [r.indication for r in measure(batch)] == [600.0 + i for i in range(20)]


def test_readings_carry_the_chain_resolved_from_the_register() -> None:
    channel = chained_spec(register_records(upstream_until=datetime(2026, 7, 1, tzinfo=UTC)))
    [reading] = measure([acquired(750.224, channel)])
    assert reading.chain == ("CAL-2026-0117", "C-E2")
    assert reading.flags == ()


def test_an_upstream_link_expired_meanwhile_breaks_the_chain() -> None:
    channel = chained_spec(register_records(upstream_until=datetime(2026, 7, 1, tzinfo=UTC)))
    later = datetime(2026, 8, 1, tzinfo=UTC)  # C-E2 has expired; the balance's cert has not
    before, after, unstable = measure(
        [
            acquired(750.0, channel),
            acquired(750.0, channel, time=later),
            acquired(1200.0, channel, time=later, stable=False),
        ]
    )
    assert before.flags == ()
    assert after.flags == ("CHAIN_BROKEN",)
    assert after.u is not None  # still corrected: the flag says it is not traceable
    assert unstable.flags == ("CHAIN_BROKEN", "OUT_OF_CALIBRATED_RANGE", "UNSTABLE")
    assert after.chain == unstable.chain == ("CAL-2026-0117", "C-E2")


def test_a_chain_failing_at_start_up_flags_every_reading() -> None:
    records = register_records(upstream_until=datetime(2026, 5, 1, tzinfo=UTC))
    channel = chained_spec(records)
    assert channel.chain is not None
    assert channel.chain.broken
    assert "E2-SET" in channel.chain.problem
    [reading] = measure([acquired(750.0, channel)])
    assert reading.flags == ("CHAIN_BROKEN",)


def test_a_transformer_chain_joins_the_channels_ids_window_and_problems() -> None:
    records = register_records(upstream_until=datetime(2026, 7, 1, tzinfo=UTC))
    ct = CertificateRecord(
        number="JD-CT-7",
        kind="verification",
        issuer="County Verification Station",
        accreditation="(浙)法计(2022)03002号",
        route="legal metrology institute",
        issued=datetime(2026, 2, 1, tzinfo=UTC),
        valid_until=datetime(2026, 6, 20, tzinfo=UTC),
        subject="CT-7",
        made_with=("E2-SET",),  # any standard of the register will do for the walk
        passed=True,
        accuracy_class="0.2S",
    )
    walked = resolve_certificate_chain("JD-CT-7", NOW, records=[*records, ct], standards=STANDARDS)
    assert walked is not None
    channel = chained_spec(records)
    assert channel.chain is not None
    joined = channel.chain.joined("CT", "JD-CT-7", walked)
    assert joined.certificate_ids == ("CAL-2026-0117", "C-E2", "JD-CT-7")
    assert not joined.broken
    assert joined.valid_from == datetime(2026, 2, 1, tzinfo=UTC)  # the CT's issue
    assert joined.valid_until == datetime(2026, 6, 20, tzinfo=UTC)  # the CT's expiry
    assert not joined.broken_at(NOW)
    assert joined.broken_at(datetime(2026, 6, 21, tzinfo=UTC))
    # A channel the register knows nothing of becomes checked by its CT's chain.
    bare = ChannelChain.from_result("CAL-2026-0117", None).joined("CT", "JD-CT-7", walked)
    assert bare.checked
    assert bare.certificate_ids == ("CAL-2026-0117", "JD-CT-7", "C-E2")
    # A failing link up the CT's chain breaks the channel's, and the problem says so.
    failed = resolve_certificate_chain(
        "JD-CT-7", NOW, records=[*records, replace(ct, accreditation="")], standards=STANDARDS
    )
    assert failed is not None
    broken = channel.chain.joined("CT", "JD-CT-7", failed)
    assert broken.broken
    assert broken.problem.startswith("CT CT-7: ")
    assert "no authorisation number" in broken.problem


def test_a_register_without_the_channel_leaves_its_certificate_alone_unflagged() -> None:
    channel = chained_spec([])
    [reading] = measure([acquired(750.0, channel)])
    assert reading.chain == ("CAL-2026-0117",)
    assert reading.flags == ()
    [plain] = measure([acquired(750.0, spec(balance_certificate()))])
    assert plain.chain == ("CAL-2026-0117",)
    [bare] = measure([acquired(750.0, spec(None))])
    assert bare.chain == ()


async def test_pipeline_commits_batches_and_notifies(tmp_path: Path) -> None:
    store = await AsyncStore.open(f"sqlite:///{tmp_path / 'm.db'}", station="lab-1")
    committed: list[int] = []
    pipeline = Pipeline(
        store,
        Stamper("lab-1"),
        batch_max=7,
        batch_latency=0.01,
        on_commit=lambda batch: committed.append(batch[-1].seq),
    )
    channel = spec(balance_certificate())
    task = asyncio.create_task(pipeline.run())
    await pipeline.submit([acquired(500.0 + i, channel) for i in range(30)])
    await pipeline.close()
    await task
    assert pipeline.last_seq == 30
    assert committed[-1] == 30
    assert all(b - a <= 7 for a, b in zip([0, *committed], committed, strict=False))
    rows = await store.call(lambda: store.store.readings(ascending=True))
    assert [r["indication"] for r in rows] == [500.0 + i for i in range(30)]
    objects = [{k: v for k, v in r.items() if k != "body"} for r in rows]
    assert list(verify_chain(objects)) == []
    await store.aclose()
