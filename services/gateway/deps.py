"""Dependencies of the routes: everything comes from ``app.state`` (set by ``main``), so a
test swaps any of them with ``app.dependency_overrides``."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.gateway.errors import ApiError
from services.gateway.upstream import Timeouts, Upstream
from vplab.datasets import DatasetStore
from vplab.settings import Settings
from vplab.storage import ArtifactStore
from vplab.tenancy import RequestLimits

_bearer = HTTPBearer(
    auto_error=False, description="The tenant's API key: `Authorization: Bearer vpl_...`"
)


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> ArtifactStore:
    return request.app.state.store


def get_datasets(request: Request) -> DatasetStore:
    return request.app.state.datasets


def get_limits(request: Request) -> RequestLimits:
    return request.app.state.datasets.limits


def get_timeouts(request: Request) -> Timeouts:
    return request.app.state.timeouts


def get_upstream(request: Request) -> Upstream:
    up = getattr(request.app.state, "upstream", None)
    if up is None:
        raise ApiError(503, "the gateway is not started")
    return up


def get_tenant(
    request: Request,
    _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> str:
    """The authenticated tenant id (the one auth check; never taken from request data)."""
    return request.app.state.auth.authenticate(request.headers.get("authorization")).id


def get_authorization(request: Request) -> str | None:
    """The caller's credentials, forwarded to the services (which authenticate them again)."""
    return request.headers.get("authorization")


TenantId = Annotated[str, Depends(get_tenant)]
AuthHeader = Annotated[str | None, Depends(get_authorization)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
DatasetsDep = Annotated[DatasetStore, Depends(get_datasets)]
LimitsDep = Annotated[RequestLimits, Depends(get_limits)]
UpstreamDep = Annotated[Upstream, Depends(get_upstream)]
TimeoutsDep = Annotated[Timeouts, Depends(get_timeouts)]
