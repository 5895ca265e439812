"""Error classes match the models, and an unexpected failure becomes the service's internal error."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from mlharbor import errors
from mlharbor.api.services import Service
from mlharbor.app import create_app
from mlharbor.config import load_settings
from tests.conftest import model


@pytest.mark.parametrize("service", ["rekognition", "comprehend"])
def test_every_modelled_error_has_a_class_named_like_its_code(service):
    service_model = model(service)
    codes = {
        shape.name
        for op in service_model.operation_names
        for shape in service_model.operation_model(op).error_shapes
    }
    missing = sorted(code for code in codes if errors.by_code(code) is None)
    assert not missing
    faults = {code for code in codes if errors.by_code(code).status >= 500}  # type: ignore[union-attr]
    assert faults == (
        {"InternalServerError", "ThrottlingException"}
        if service == "rekognition"
        else {"InternalServerException"}
    )


def _call_in_process(app, target: str) -> tuple[int, dict, dict]:  # type: ignore[no-untyped-def]
    """Drive the ASGI app directly, signed like botocore signs."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        method="POST", url="http://testserver/", data=b"{}", headers={"X-Amz-Target": target}
    )
    service = "rekognition" if target.startswith("Rekognition") else "comprehend"
    SigV4Auth(Credentials("test", "test"), service, "us-east-1").add_auth(request)
    headers = [(k.lower().encode(), v.encode()) for k, v in request.prepare().headers.items()]
    headers.append((b"host", b"testserver"))
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": headers,
    }
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start, body = sent
    return (
        start["status"],
        dict((k.decode(), v.decode()) for k, v in start["headers"]),
        json.loads(body["body"]),
    )


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("RekognitionService.ListStreamProcessors", "InternalServerError"),
        ("Comprehend_20171127.ListEntityRecognizers", "InternalServerException"),
    ],
)
def test_an_unexpected_exception_is_logged_and_becomes_a_500(tmp_path, caplog, target, code):
    app = create_app(load_settings(data_dir=tmp_path))
    prefix, operation = target.split(".")
    real = app.gateway.services[prefix]

    def broken(call, params):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    app.gateway.services[prefix] = Service(real.name, real.dialect, {**real.handlers, operation: broken})
    try:
        with caplog.at_level(logging.ERROR, logger="mlharbor.api"):
            status, headers, body = _call_in_process(app, target)
    finally:
        app.state.server.close()
    assert (status, body["__type"], headers["x-amzn-errortype"]) == (500, code, code)
    assert "a bug" not in body["Message"]  # internals stay in the log
    assert headers["x-amzn-requestid"] in caplog.text and "RuntimeError: a bug" in caplog.text
