"""The server's state names, defined once: a job's status, what a cancel did, a webhook delivery's status.

They are `StrEnum`s, so a member is the very string the v2 contract, the database rows and the JSON bodies carry
(`JobStatus.COMPLETED == "COMPLETED"`, and it hashes, formats and serialises as that string). The pydantic schemas
(schemas.py) use these enums, so the OpenAPI document lists exactly these values.
"""

from __future__ import annotations

from enum import Enum

try:
    from enum import StrEnum
except ImportError:  # Python 3.10 (the package allows it): the same behaviour, spelled out

    class StrEnum(str, Enum):  # type: ignore[no-redef]
        __str__ = str.__str__
        __format__ = str.__format__  # type: ignore[assignment]


class JobStatus(StrEnum):
    """A job's status (the `status` column of `jobs`, and of every status body)."""

    QUEUED = "QUEUED"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.PROCESSING})  # waiting for a worker, or being run
TERMINAL = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED}
)  # ended: nothing changes after


class CancelAction(StrEnum):
    """What POST /v2/requests/{id}/cancel did (`CancelResponse.action`)."""

    REMOVED = "removed"  # it was queued: taken out of the queue, its credits released
    STOPPED = "stopped"  # it was running and stopped at a step, its credits released
    STOPPING = "stopping"  # it is running: its worker stops at the next step
    ALREADY_FINISHED = "already_finished"  # it had ended before the cancel


# `Store.cancel` answers REMOVED, STOPPING, or this for a job that had already ended (the service then tells
# STOPPED from ALREADY_FINISHED by the job's final status).
CANCEL_FINISHED = "finished"


class DeliveryStatus(StrEnum):
    """A webhook message's delivery state (the `status` column of `webhook_deliveries`)."""

    PENDING = "pending"  # due now or at `next_attempt`
    DELIVERED = "delivered"  # a receiver answered 2xx
    FAILED = "failed"  # given up after the last retry
