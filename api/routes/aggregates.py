"""Aggregates: per batch or model, the succeeded jobs' mean and p10/p50/p90 of each aspect."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from videoscore.api.deps import ClientDep, JobFilterDep
from videoscore.api.schemas import AggregatesOut, GroupOut

router = APIRouter(tags=["batches"])  # listed with the batches in the docs, as it always was


@router.get("/aggregates", response_model=AggregatesOut)
def aggregates(where: JobFilterDep, client: ClientDep,
               group_by: Literal["batch", "model"] = "batch") -> AggregatesOut:
    """Per batch or model: succeeded jobs, mean and p10/p50/p90 of each aspect."""
    return AggregatesOut(group_by=group_by, groups=[GroupOut.of(g) for g in client.aggregate(group_by, where)])
