"""Where a stream worker's AWS calls go: Kinesis Video (its input), Kinesis Data Streams and SNS (its
outputs).

By default each is this MLHarbor server, as the embedded default: the server's URL and a key of the
processor's account travel in the worker's payload, so a worker on another machine needs nothing else.
When ``AWS_ENDPOINT_URL_<SERVICE>`` is set in the server's environment (real AWS, another emulator), the
worker leaves that service to boto3's standard configuration instead, which reads the same variable.
"""

from __future__ import annotations

import os
from typing import Any

# payload key -> the variable that sends the service elsewhere
VARIABLES = {
    "kvs": "AWS_ENDPOINT_URL_KINESIS_VIDEO",
    "kinesis": "AWS_ENDPOINT_URL_KINESIS",
    "sns": "AWS_ENDPOINT_URL_SNS",
}


def payload(server: Any, account_id: str) -> dict[str, dict[str, str | None]]:
    """For each service, this server's URL and credentials, or ``{"endpoint": None}`` (boto3's defaults)."""
    return {
        key: {"endpoint": None} if os.environ.get(variable) else dict(server.own_endpoint(account_id))
        for key, variable in VARIABLES.items()
    }


def client_args(endpoint: dict[str, Any] | None, region: str | None, config: Any) -> dict[str, Any]:
    """``boto3.client`` keyword arguments for one of ``payload``'s entries."""
    args: dict[str, Any] = {"region_name": region, "config": config}
    if endpoint and endpoint.get("endpoint"):
        args.update(
            endpoint_url=endpoint["endpoint"],
            aws_access_key_id=endpoint["access_key"],
            aws_secret_access_key=endpoint["secret_key"],
        )
    return args
