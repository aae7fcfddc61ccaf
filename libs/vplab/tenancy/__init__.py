"""Tenancy: tenants and API keys, the shared authentication check, quotas and limits.

See ARCHITECTURE.md, "Tenancy and security". A tenant id always comes from
``Authenticator.authenticate*`` (the authenticated identity), never from request data.
"""

from vplab.tenancy.auth import AUTH_METADATA_KEY, Authenticator, parse_bearer
from vplab.tenancy.limits import RequestLimits
from vplab.tenancy.quotas import Quotas, Usage, object_sizes
from vplab.tenancy.tenants import (
    KeyInfo,
    Tenant,
    create_key,
    create_tenant,
    get_tenant,
    hash_api_key,
    is_well_formed_key,
    list_keys,
    list_tenants,
    revoke_key,
    rotate_key,
    slugify,
)

__all__ = [
    "AUTH_METADATA_KEY",
    "Authenticator",
    "KeyInfo",
    "Quotas",
    "RequestLimits",
    "Tenant",
    "Usage",
    "create_key",
    "create_tenant",
    "get_tenant",
    "hash_api_key",
    "is_well_formed_key",
    "list_keys",
    "list_tenants",
    "object_sizes",
    "parse_bearer",
    "revoke_key",
    "rotate_key",
    "slugify",
]
