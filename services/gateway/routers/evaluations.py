"""Evaluations: a visual-prompting pipeline (stock or tuned) scored on labelled images.
Calls to the training app, which runs them as durable jobs (``service Predictions``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from services.gateway import schemas as S
from services.gateway.deps import AuthHeader, TenantId, UpstreamDep
from services.gateway.params import ERROR_RESPONSES, V1, DatasetIdPath
from services.gateway.routers.predictions import references_in, references_out
from vplab.rpc import convert
from vplab.rpc.convert import TRAINING
from vplab.rpc.v1 import predictions_pb2 as pb
from vplab.storage.keys import ID_PATTERN

router = APIRouter(prefix=V1, tags=["evaluations"], responses=ERROR_RESPONSES)

EvaluationIdPath = Annotated[str, Path(pattern=ID_PATTERN, description="An evaluation id")]


def _out(evaluation: pb.Evaluation) -> dict[str, Any]:
    return references_out(convert.evaluation_from_pb(evaluation))


@router.post(
    "/evaluations",
    summary="Evaluate the stock pipeline or a tuned model on labelled images",
    status_code=201,
    response_model=S.EvaluationOut,
)
async def start_evaluation(
    body: S.EvaluationCreate, tenant: TenantId, authorization: AuthHeader, up: UpstreamDep
) -> Any:
    request = convert.start_evaluation_to_pb(
        body.dataset_id,
        references_in(body.references),
        body.model_id,
        body.images,
        body.matcher,
        body.seed,
    )
    r = await up.unary(TRAINING, "StartEvaluation", request, authorization)
    return _out(r.evaluation)


@router.get(
    "/evaluations/{evaluation_id}", summary="Get an evaluation", response_model=S.EvaluationOut
)
async def get_evaluation(
    evaluation_id: EvaluationIdPath, tenant: TenantId, authorization: AuthHeader, up: UpstreamDep
) -> Any:
    request = pb.GetEvaluationRequest(evaluation_id=evaluation_id)
    r = await up.unary(TRAINING, "GetEvaluation", request, authorization)
    return _out(r.evaluation)


@router.get(
    "/datasets/{dataset_id}/evaluations",
    summary="List a dataset's evaluations, newest first",
    response_model=S.EvaluationList,
)
async def list_evaluations(
    dataset_id: DatasetIdPath,
    tenant: TenantId,
    authorization: AuthHeader,
    up: UpstreamDep,
    limit: Annotated[int, Query(ge=0, le=1000, description="0 = the service default")] = 0,
) -> Any:
    request = pb.ListPredictionsRequest(dataset_id=dataset_id, limit=limit)
    r = await up.unary(TRAINING, "ListEvaluations", request, authorization)
    return {"evaluations": [_out(e) for e in r.evaluations]}
