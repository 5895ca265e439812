"""Several API servers on one PostgreSQL database (they always use PostgreSQL: SQLite is single-server):
any server serves every resource, exactly one copy of each piece of work runs, and the work of a server that
dies (kill -9) is taken over by another within a few seconds, with no attempt wasted on live work."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import (
    RunningServer,
    unique,
    wait_until,
)
from tests.deployment import Deployment, start_face_search
from tests.services.comprehend.conftest import ROLE
from tests.services.comprehend.corpus import upload

TRAINED: dict[str, str] = {}  # what the training test leaves for the endpoint test


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    cluster = Deployment(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.close()


def test_a_training_whose_server_dies_is_finished_by_another_with_one_attempt_more(cluster):
    first, second = cluster.alive
    config = upload(cluster.data_dir, "training", unique("corpus"), docs=120)
    arn = first.client("comprehend").create_entity_recognizer(
        RecognizerName=unique("rec"), LanguageCode="en", DataAccessRoleArn=ROLE, InputDataConfig=config
    )["EntityRecognizerArn"]

    def status(server: RunningServer) -> dict[str, Any]:
        described = server.client("comprehend").describe_entity_recognizer(EntityRecognizerArn=arn)
        return described["EntityRecognizerProperties"]

    # Created on one server, described on the other; exactly one of them trains it.
    wait_until(lambda: status(second)["Status"] == "TRAINING", timeout=60, what="TRAINING")
    [owner] = wait_until(lambda: cluster.owners("training"), what="the training's lease")
    [(attempt,)] = cluster.query("SELECT attempt FROM entity_recognizers WHERE arn = %s", arn)
    survivor = cluster.other(owner)
    cluster.kill(owner)
    killed = time.monotonic()
    wait_until(lambda: cluster.owners("training") == [survivor], timeout=20, what="the survivor's lease")
    taken_over = time.monotonic() - killed
    props = wait_until(
        lambda: (p := status(survivor))["Status"] in ("TRAINED", "TRAINED_WITH_WARNING", "IN_ERROR") and p,
        timeout=240, interval=0.2, what="TRAINED",
    )  # fmt: skip
    assert props["Status"] in ("TRAINED", "TRAINED_WITH_WARNING"), props.get("Message")
    assert props["RecognizerMetadata"]["EvaluationMetrics"]["F1Score"] > 50
    [(final,)] = cluster.query("SELECT attempt FROM entity_recognizers WHERE arn = %s", arn)
    assert final == attempt + 1  # one new attempt, for the dead server's; none for live work
    assert taken_over < 3.0 + 5.0  # the lease period, and the survivor's next pass, on a loaded machine
    cluster.start()  # the pair again, for the next tests
    TRAINED["arn"] = arn


def test_an_endpoint_answers_through_every_server_and_outlives_the_server_running_it(cluster):
    if "arn" not in TRAINED:
        pytest.fail("the training test did not leave a trained recognizer")
    arn = TRAINED["arn"]
    first, second = cluster.alive
    endpoint = first.client("comprehend").create_endpoint(
        EndpointName=unique("ep"), ModelArn=arn, DesiredInferenceUnits=1
    )["EndpointArn"]

    def detect(server: RunningServer) -> list[dict[str, Any]]:
        client = server.client("comprehend")
        return client.detect_entities(Text="Alice Smith flew to Paris.", EndpointArn=endpoint)["Entities"]

    wait_until(
        lambda: second.client("comprehend").describe_endpoint(EndpointArn=endpoint)["EndpointProperties"][
            "Status"
        ]
        == "IN_SERVICE",
        timeout=90, what="IN_SERVICE",
    )  # fmt: skip
    # Whichever server runs the serving unit, both answer (the address is in the database).
    assert detect(first) == detect(second) != []
    # The endpoint's inference unit (100 characters/s) holds across the servers: the worker keeps it. A
    # 1,000-character text, admitted as soon as the unit has any capacity left, uses ten seconds' worth; the
    # next request, through the other server, must wait.
    clients = [first.client("comprehend"), second.client("comprehend")]
    long_text = ("Alice Smith flew to Paris. " * 40)[:1000]

    def admitted() -> bool:
        try:
            clients[0].detect_entities(Text=long_text, EndpointArn=endpoint)
        except clients[0].exceptions.TooManyRequestsException:
            return False
        return True

    wait_until(admitted, timeout=10, interval=0.1, what="the long text admitted")
    with pytest.raises(ClientError) as throttled:
        clients[1].detect_entities(Text="Alice Smith.", EndpointArn=endpoint)
    assert throttled.value.response["Error"]["Code"] == "TooManyRequestsException"
    [owner] = cluster.owners("endpoint")
    survivor = cluster.other(owner)
    cluster.kill(owner)
    answered = wait_until(lambda: _answers(detect, survivor), timeout=30, what="an answer after the death")
    assert answered
    assert cluster.owners("endpoint") == [survivor]
    cluster.start()


def _answers(detect: Callable[[RunningServer], Any], server: RunningServer) -> Any:
    try:
        return detect(server)
    except Exception:  # noqa: BLE001 - unavailable while the unit starts again on the survivor
        return None


def test_a_stream_processor_whose_server_dies_runs_again_on_another(cluster):
    first, second = cluster.alive
    # Created on one server, started through the other; its records read through the other too.
    kinesis = second.client("kinesis")
    name, records = start_face_search(
        first.client("rekognition"), kinesis, start_with=second.client("rekognition")
    )
    wait_until(lambda: len(records.read()) >= 3, timeout=90, what="records")
    [owner] = cluster.owners("stream")
    [(attempt,)] = cluster.query("SELECT attempt FROM stream_processors WHERE name = %s", name)
    survivor = cluster.other(owner)
    cluster.kill(owner)
    killed = time.time()
    records.kinesis = kinesis = survivor.client("kinesis")
    wait_until(lambda: cluster.owners("stream") == [survivor], timeout=20, what="the survivor's lease")

    wait_until(lambda: records.after(killed), timeout=60, what="records after the death")
    rek = survivor.client("rekognition")
    assert rek.describe_stream_processor(Name=name)["Status"] == "RUNNING"
    [(final,)] = cluster.query("SELECT attempt FROM stream_processors WHERE name = %s", name)
    assert final == attempt + 1
    rek.stop_stream_processor(Name=name)
    wait_until(lambda: rek.describe_stream_processor(Name=name)["Status"] == "STOPPED", what="STOPPED")
    wait_until(lambda: not cluster.owners("stream"), what="the lease released")
    cluster.start()
