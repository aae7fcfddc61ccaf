"""``vplab tenants create|list|new-key|revoke``: tenants and API keys (only hashes are stored)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tenants", help="manage tenants and API keys (uses VPLAB_* store settings)")
    tsub = p.add_subparsers(dest="tenants_command", required=True, metavar="SUBCOMMAND")
    q = tsub.add_parser("create", help="create a tenant and print its first API key")
    q.add_argument("name")
    q.set_defaults(func=run_create)
    q = tsub.add_parser("list", help="list tenants")
    q.set_defaults(func=run_list)
    q = tsub.add_parser("new-key", help="print a new API key for an existing tenant")
    q.add_argument("tenant")
    q.set_defaults(func=run_new_key)
    q = tsub.add_parser("revoke", help="revoke an API key")
    q.add_argument("tenant")
    q.add_argument("key", help="the API key or its key id")
    q.set_defaults(func=run_revoke)


def _store_and_pepper():
    from vplab.settings import get_settings
    from vplab.storage import open_store

    s = get_settings()
    return open_store(s), s.api_key_pepper


def run_create(args: argparse.Namespace) -> int:
    from vplab.tenancy import create_tenant

    store, pepper = _store_and_pepper()
    tenant, key = create_tenant(store, args.name, pepper)
    print(f"tenant: {tenant.id}")
    print(f"api_key: {key}")
    print("(store the key now: only its hash is kept)")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from vplab.tenancy import list_tenants

    store, _ = _store_and_pepper()
    for t in list_tenants(store):
        print(f"{t.id}\t{t.name}")
    return 0


def run_new_key(args: argparse.Namespace) -> int:
    from vplab.tenancy import create_key

    store, pepper = _store_and_pepper()
    print(f"api_key: {create_key(store, args.tenant, pepper)}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from vplab.tenancy import revoke_key

    store, pepper = _store_and_pepper()
    revoke_key(store, args.tenant, args.key, pepper)
    print("revoked")
    return 0
