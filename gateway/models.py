# SPDX-License-Identifier: Apache-2.0
"""The store's tables, as SQLModel classes (the same tables on SQLite and PostgreSQL).

`readings` is also the outbox: a reading is pending while its seq is above the
``forwarded_seq`` of `ForwardState`. Keeping a high-water mark instead of a flag per row makes
marking a window of thousands of readings forwarded a one-row update.
"""

from sqlmodel import Field, SQLModel


class ReadingRow(SQLModel, table=True):
    """One stamped reading.

    `body` is exactly the canonical JSON its hash covers, so it is the reading: value, unit,
    uncertainty, certificate and flags live there (query them with SQLite's ``json_extract``
    or PostgreSQL's ``jsonb`` operators). The other columns are what the station itself
    looks readings up by. Keeping the row narrow keeps the hot-path insert cheap.
    """

    __tablename__ = "readings"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    # Unique by construction (UUIDv7); an index on it would cost a tenth of the insert time
    # and the station never looks readings up by id (collectors do, with their own index).
    id: str = Field(max_length=36)
    instrument: str = Field(index=True, max_length=64)
    channel: str = Field(max_length=64)
    time: str = Field(max_length=32)
    flags: str = ""
    hash: str = Field(max_length=64)
    body: bytes


class ForwardState(SQLModel, table=True):
    """How far the outbox has been acknowledged by the broker (PUBACK)."""

    __tablename__ = "forward_state"

    name: str = Field(primary_key=True, max_length=32)
    forwarded_seq: int = 0


class StationMeta(SQLModel, table=True):
    """Facts about the database itself: which station owns it, the schema version."""

    __tablename__ = "station_meta"

    key: str = Field(primary_key=True, max_length=32)
    value: str


class CheckpointRow(SQLModel, table=True):
    """A signed checkpoint (`gateway.checkpoints`), member for member as published.

    `id` orders checkpoints as they were signed; the checkpoints' outbox mark
    (`ForwardState` named ``mqtt-checkpoints``) is the highest `id` the broker acknowledged.
    """

    __tablename__ = "checkpoints"

    id: int | None = Field(default=None, primary_key=True)
    station: str = Field(max_length=64)
    seq: int = Field(index=True)
    hash: str = Field(max_length=64)
    time: str = Field(max_length=32)
    key: str = Field(max_length=64)
    signature: str = Field(max_length=128)


class StationKeyRow(SQLModel, table=True):
    """A public key the station has signed checkpoints with; none is ever deleted.

    The current signing key is the one with no `retired` time. Old keys stay so that the
    checkpoints they signed still verify after a rotation.
    """

    __tablename__ = "station_keys"

    fingerprint: str = Field(primary_key=True, max_length=64)
    public_key: str = Field(max_length=64)
    created: str = Field(max_length=32)
    retired: str | None = Field(default=None, max_length=32)


class StandardRow(SQLModel, table=True):
    """A measurement standard of the register (`calibration.chain.Standard`)."""

    __tablename__ = "register_standards"

    id: str = Field(primary_key=True, max_length=64)
    name: str = ""
    level: str = Field(max_length=32)
    assessment_certificate: str | None = None
    assessment_valid_until: str | None = Field(default=None, max_length=32)


class CertificateRow(SQLModel, table=True):
    """A certificate of the register (`calibration.chain.CertificateRecord`) and its points.

    Times are RFC 3339 UTC text, as in `readings`; `made_with` and `points` are JSON arrays
    (points as ``[indication, correction, U, k]`` in normal form, ready for
    `calibration.Certificate`), so that a channel's correction can be built from the register.
    `mpe_rule` is a verification's ``mpe`` as the import file gave it, in JSON (a number or a
    rule table such as ``{"rule": "energy-meter", "class": "0.5S"}``); `mpe` keeps a constant
    MPE as a number. `mpe_rule` was added after the first release: `gateway.register`
    adds the column to an older database when it opens it.
    """

    __tablename__ = "register_certificates"

    number: str = Field(primary_key=True, max_length=128)
    kind: str = Field(max_length=16)
    issuer: str = ""
    accreditation: str = ""
    route: str = Field(max_length=32)
    issued: str = Field(max_length=32)
    valid_until: str | None = Field(default=None, max_length=32)
    interval_days: float | None = None
    subject: str = Field(index=True, max_length=130)
    made_with: str = "[]"
    range_min: float | None = None
    range_max: float | None = None
    range_unit: str | None = None
    accuracy_class: str | None = None
    mpe: float | None = None
    mpe_rule: str | None = None
    passed: bool | None = None
    procedure: str = ""
    unit: str | None = None
    points: str = "[]"
    point_correlation: float = 1.0
    interpolation_u: float | None = None
    source: str = ""
