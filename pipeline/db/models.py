"""The tracking database: studies → series → instances; jobs with events, results, lesions,
exports and reviews; and an audit trail of admin actions.

Columns holding DICOM data use the snake_case of the attribute keyword (STYLE.md). Patient
attributes are stored for the worklist (the database is clinical data) but never logged.
All timestamps are aware UTC (:class:`~pipeline.db.types.UTCDateTime`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from pipeline.db.states import ExportState, JobState, ReviewState
from pipeline.db.types import StrEnumType, UTCDateTime, utcnow

UID = String(64)  # PS3.5 UI: at most 64 characters
AE_TITLE = String(16)

# Deterministic constraint names, so migrations name the same objects on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Study(Timestamped, Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))  # PN: 5 × 64 + separators
    patient_id: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(String(8))  # DA as received: YYYYMMDD
    study_description: Mapped[str | None] = mapped_column(String(64))
    accession_number: Mapped[str | None] = mapped_column(String(16))

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Timestamped, Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")
    jobs: Mapped[list[Job]] = relationship(back_populates="series")


class Instance(Base):
    """One received SOP instance, kept in the spool exactly as it arrived."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    calling_ae_title: Mapped[str] = mapped_column(AE_TITLE)
    called_ae_title: Mapped[str | None] = mapped_column(AE_TITLE)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    content_digest: Mapped[str] = mapped_column(String(64))  # SHA-256 hex of the stored bytes
    spool_path: Mapped[str] = mapped_column(String(1024))
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    # None while unclassified; a reason when the instance is not part of a whole-body bone scan.
    skip_reason: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Timestamped, Base):
    """One (series, model version) unit of work; a rerun is a new job of a higher generation."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_updated_at", "state", "updated_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(String(128))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    # SHA-256 over (source SOP instance UIDs + their content digests + model version +
    # generation); rows opened before revision 0003 used the pixel data's digest instead.
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[JobState] = mapped_column(StrEnumType(JobState), default=JobState.RECEIVED)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    weights_path: Mapped[str | None] = mapped_column(String(1024))

    series: Mapped[Series] = relationship(back_populates="jobs")
    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )
    results: Mapped[list[Result]] = relationship(
        back_populates="job", order_by="Result.id", cascade="all, delete-orphan"
    )
    exports: Mapped[list[Export]] = relationship(
        back_populates="job", order_by="Export.id", cascade="all, delete-orphan"
    )
    reviews: Mapped[list[Review]] = relationship(
        back_populates="job", order_by="Review.id", cascade="all, delete-orphan"
    )


class JobEvent(Base):
    """One state transition of a job; per-stage latency comes from these rows."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[JobState | None] = mapped_column(StrEnumType(JobState))
    to_state: Mapped[JobState] = mapped_column(StrEnumType(JobState))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    detail: Mapped[str | None] = mapped_column(Text)
    # A stage mark within a state (see :class:`~pipeline.db.states.Stage`); None on transitions
    # that are not also a stage.
    stage: Mapped[str | None] = mapped_column(String(32))

    job: Mapped[Job] = relationship(back_populates="events")


class Result(Base):
    """The segmentation of one view of a job's scan (one SEG per scan holds both views)."""

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("job_id", "view"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    view: Mapped[str] = mapped_column(String(16))  # "anterior" | "posterior"
    source_sop_instance_uid: Mapped[str] = mapped_column(UID)
    source_frame_number: Mapped[int | None] = mapped_column(Integer)
    seg_series_instance_uid: Mapped[str] = mapped_column(UID)
    seg_sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    seg_path: Mapped[str] = mapped_column(String(1024))
    # The TID 1500 summary SR written beside the SEG (one per scan, like the SEG).
    sr_sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    sr_path: Mapped[str | None] = mapped_column(String(1024))
    crop_top: Mapped[int] = mapped_column(Integer)
    lesion_count: Mapped[int] = mapped_column(Integer)
    lesion_area_mm2: Mapped[float] = mapped_column(Float)
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="results")
    lesions: Mapped[list[Lesion]] = relationship(
        back_populates="result", order_by="Lesion.id", cascade="all, delete-orphan"
    )


class Lesion(Base):
    """One connected component of a view's mask; coordinates are full-frame pixels (row, col)."""

    __tablename__ = "lesions"

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    label: Mapped[int] = mapped_column(Integer)  # component number within the view, from 1
    area_px: Mapped[int] = mapped_column(Integer)
    area_mm2: Mapped[float] = mapped_column(Float)
    centroid_row: Mapped[float] = mapped_column(Float)
    centroid_column: Mapped[float] = mapped_column(Float)
    bbox_row_min: Mapped[int] = mapped_column(Integer)
    bbox_column_min: Mapped[int] = mapped_column(Integer)
    bbox_row_max: Mapped[int] = mapped_column(Integer)
    bbox_column_max: Mapped[int] = mapped_column(Integer)
    max_probability: Mapped[float] = mapped_column(Float)

    result: Mapped[Result] = relationship(back_populates="lesions")


class Export(Timestamped, Base):
    """Delivery of one result object (SEG or SR) to one destination, with its retry schedule."""

    __tablename__ = "exports"
    __table_args__ = (
        UniqueConstraint("job_id", "destination", "sop_instance_uid"),
        Index("ix_exports_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(1024))
    state: Mapped[ExportState] = mapped_column(
        StrEnumType(ExportState), default=ExportState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    job: Mapped[Job] = relationship(back_populates="exports")


class Review(Base):
    """A radiologist's accept / reject of a job's result."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    state: Mapped[ReviewState] = mapped_column(StrEnumType(ReviewState))
    reviewer: Mapped[str] = mapped_column(String(128))
    comment: Mapped[str | None] = mapped_column(Text)
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="reviews")


class AuditEvent(Base):
    """One admin action (CLI or review page): who did what to which object, and when."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str | None] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[str | None] = mapped_column(Text)  # JSON, no patient data
