"""Generate the Helm chart's view of the Serve applications from ``vplab.serving.apps``.

The chart (``deploy/helm/vplab``) builds ``serveConfigV2`` from ``files/apps.json`` plus its
values, so app names, import paths, ports and gRPC servicer functions are never typed twice.
Regenerate after changing ``APPS``::

    python -m vplab.serving.chart            # writes deploy/helm/vplab/files/apps.json
    python -m vplab.serving.chart --check    # exit 1 if the committed file is stale

``tests/test_deploy.py`` fails when the committed file differs from ``render()``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vplab.serving import apps as _apps

CHART_DIR = Path(__file__).resolve().parents[3] / "deploy" / "helm" / "vplab"
APPS_JSON = "files/apps.json"


def apps_document() -> dict[str, Any]:
    """Everything the chart needs from ``APPS``; the static parts of ``serve_config()``
    are taken from a call to it, so the two can never disagree."""
    base = _apps.serve_config()
    return {
        "_generated_by": "python -m vplab.serving.chart (from vplab.serving.apps); do not edit",
        "grpc_port": _apps.GRPC_PORT,
        "http_port": _apps.HTTP_PORT,
        "gateway_port": _apps.GATEWAY_PORT,
        "proxy_location": base["proxy_location"],
        "admission": _apps.default_admission(),
        "pin_roles": {
            "env": _apps.PIN_ROLES_ENV,
            "sliver": _apps.ROLE_RESOURCE_SLIVER,
            "resources": {a.role: _apps.role_resource(a.role) for a in _apps.APPS},
        },
        "http_options": base["http_options"],
        "grpc_options": base["grpc_options"],
        "applications": [
            {
                "name": a.name,
                "route_prefix": a.route_prefix,
                "import_path": a.import_path,
                "servicer": a.servicer,
                "deployment": a.deployment,
                "role": a.role,
                "default_num_gpus": a.default_num_gpus,
            }
            for a in _apps.APPS
        ],
    }


def render() -> str:
    return json.dumps(apps_document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vplab.serving.chart", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--chart", type=Path, default=CHART_DIR, help="chart directory (default: %(default)s)"
    )
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the file is stale"
    )
    args = parser.parse_args(argv)
    target = args.chart / APPS_JSON
    text = render()
    if args.check:
        current = target.read_text() if target.exists() else None
        if current != text:
            print(f"{target} is stale: run python -m vplab.serving.chart", file=sys.stderr)
            return 1
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(target)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
