# SPDX-License-Identifier: Apache-2.0
"""Small builders shared by gateway tests."""

from datetime import UTC, datetime

from calibration import Certificate
from gateway.pipeline import Acquired, ChannelSpec
from gateway.stamp import Measured

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def balance_certificate(
    *, valid_until: datetime = datetime(2027, 1, 9, tzinfo=UTC)
) -> Certificate:
    return Certificate.from_points(
        certificate_id="CAL-2026-0117",
        unit="g",
        issuer="Provincial Institute",
        kind="calibration",
        valid_from=datetime(2026, 1, 10, tzinfo=UTC),
        valid_until=valid_until,
        abscissa="indication",
        convention="correction",
        points=[(500.0, -0.10, 0.06, 2.0), (1000.0, -0.20, 0.08, 2.0)],
        point_correlation=0.5,
        interpolation_u=0.0144338,
    )


def spec(certificate: Certificate | None = None, *, unit: str = "g") -> ChannelSpec:
    return ChannelSpec(
        instrument="balance-1",
        channel="mass",
        quantity="mass",
        unit=unit,
        resolution=0.01,
        certificate_id=certificate.certificate_id if certificate else None,
        certificate=certificate,
    )


def acquired(
    indication: float,
    channel: ChannelSpec,
    *,
    unit: str = "g",
    stable: bool = True,
    time: datetime = NOW,
) -> Acquired:
    return Acquired(spec=channel, indication=indication, unit=unit, stable=stable, time=time)


def measured(value: float, *, instrument: str = "balance-1") -> Measured:
    return Measured(
        instrument=instrument,
        channel="mass",
        quantity="mass",
        indication=value,
        value=value,
        unit="g",
        u=0.04,
        expanded_u=0.08,
        k=2.0,
        certificate="CAL-2026-0117",
        chain=("CAL-2026-0117",),
        time="2026-06-01T12:00:00.000000Z",
        flags=(),
    )
