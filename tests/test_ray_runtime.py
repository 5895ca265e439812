"""``mlharbor serve --runtime ray://HOST:PORT``: long work runs as detached actors on a Ray cluster (a
loopback head and two worker nodes, ``tests/runtime/ray_cluster.py``), two API servers on one PostgreSQL
database: a training, a detection job, an endpoint and a face search processor end to end; an API server
that dies leaves its training running, adopted by the other server (no new attempt); a worker node that
dies has its processor started again on the other node."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    RunningServer,
    unique,
    wait_until,
    worker_pids,
)
from tests.deployment import Deployment, node_of, start_face_search
from tests.runtime.ray_cluster import RayCluster, ray_cluster  # noqa: F401  (the session's cluster)
from tests.services.comprehend.conftest import ROLE
from tests.services.comprehend.corpus import upload


@pytest.fixture(scope="module")
def deployment(ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:  # noqa: F811
    # The cluster's token goes to the servers, nothing else of this process's Ray setup.
    deployment = Deployment(
        tmp_path_factory.mktemp("ray-deployment"), "--runtime", ray_cluster.client_address,
        env=ray_cluster.driver_env({}),
    )  # fmt: skip
    yield deployment
    deployment.close()


def _recognizer_status(server: RunningServer, arn: str) -> dict[str, Any]:
    return server.client("comprehend").describe_entity_recognizer(EntityRecognizerArn=arn)[
        "EntityRecognizerProperties"
    ]


def _train(deployment: Deployment, server: RunningServer, docs: int) -> str:
    config = upload(deployment.data_dir, "training", unique("corpus"), docs=docs)
    return server.client("comprehend").create_entity_recognizer(
        RecognizerName=unique("rec"), LanguageCode="en", DataAccessRoleArn=ROLE, InputDataConfig=config
    )["EntityRecognizerArn"]


def _trained(server: RunningServer, arn: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        props = _recognizer_status(server, arn)
        assert props["Status"] not in ("IN_ERROR", "STOPPED"), props.get("Message")
        return props if props["Status"] in ("TRAINED", "TRAINED_WITH_WARNING") else None

    return wait_until(done, timeout=240, interval=0.2, what=f"{arn} TRAINED")


def test_training_detection_and_an_endpoint_run_as_ray_actors(deployment):
    first, second = deployment.alive
    arn = _train(deployment, first, docs=120)
    wait_until(lambda: _recognizer_status(second, arn)["Status"] == "TRAINING", timeout=90, what="TRAINING")
    # Nothing runs in the servers' own worker processes: the training is an actor on the cluster.
    assert worker_pids(first.process.pid) == [] and worker_pids(second.process.pid) == []
    props = _trained(second, arn)
    assert props["RecognizerMetadata"]["EvaluationMetrics"]["F1Score"] > 50

    # An entities detection job on it.
    client = second.client("comprehend")
    documents = ["Alice Smith flew to Paris.", "Bob Jones sold a Kalo Series X in Lyon."] * 10
    input_uri = _put_text(deployment.data_dir, "ray-jobs", "in/docs.txt", "\n".join(documents))
    job = client.start_entities_detection_job(
        JobName=unique("job"), EntityRecognizerArn=arn, LanguageCode="en", DataAccessRoleArn=ROLE,
        InputDataConfig={"S3Uri": input_uri, "InputFormat": "ONE_DOC_PER_LINE"},
        OutputDataConfig={"S3Uri": "s3://ray-jobs/out/"},
    )["JobId"]  # fmt: skip
    done = wait_until(
        lambda: (p := first.client("comprehend").describe_entities_detection_job(JobId=job)[
            "EntitiesDetectionJobProperties"
        ])["JobStatus"] in ("COMPLETED", "FAILED") and p,
        timeout=120, what="the job to end",
    )  # fmt: skip
    assert done["JobStatus"] == "COMPLETED", done.get("Message")

    # An endpoint, answering through both servers.
    endpoint = first.client("comprehend").create_endpoint(
        EndpointName=unique("ep"), ModelArn=arn, DesiredInferenceUnits=1
    )["EndpointArn"]

    def in_service() -> bool:
        return client.describe_endpoint(EndpointArn=endpoint)["EndpointProperties"]["Status"] == "IN_SERVICE"

    wait_until(in_service, timeout=120, what="IN_SERVICE")
    found = [
        server.client("comprehend").detect_entities(Text="Alice Smith flew to Paris.", EndpointArn=endpoint)
        for server in (first, second)
    ]
    assert found[0]["Entities"] == found[1]["Entities"] != []
    client.delete_endpoint(EndpointArn=endpoint)


def _put_text(data_dir: Path, bucket: str, key: str, text: str) -> str:
    path = data_dir / "s3" / bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return f"s3://{bucket}/{key}"


def test_a_training_outlives_the_api_server_that_started_it(deployment):
    first, second = deployment.alive
    arn = _train(deployment, first, docs=200)
    wait_until(lambda: _recognizer_status(second, arn)["Status"] == "TRAINING", timeout=90, what="TRAINING")
    [owner] = wait_until(lambda: deployment.owners("training"), what="the training's lease")
    survivor = deployment.other(owner)
    [(attempt,)] = deployment.query("SELECT attempt FROM entity_recognizers WHERE arn = %s", arn)
    deployment.kill(owner)  # kill -9; the actor on the cluster goes on training
    wait_until(lambda: deployment.owners("training") == [survivor], timeout=30, what="the survivor's lease")
    _trained(survivor, arn)
    [(final,)] = deployment.query("SELECT attempt FROM entity_recognizers WHERE arn = %s", arn)
    assert final == attempt  # adopted, not started again
    assert "interrupted" not in survivor.log()
    deployment.start()


def test_a_processor_runs_again_on_another_node_when_its_node_dies(deployment, ray_cluster):  # noqa: F811
    first, second = deployment.alive
    rek = first.client("rekognition")
    name, records = start_face_search(rek, second.client("kinesis"))
    wait_until(lambda: len(records.read()) >= 3, timeout=90, what="records")
    node = wait_until(lambda: node_of(ray_cluster, name), what="the node running the processor")
    ray_cluster.add_worker(f"{node}_successor")  # the cluster keeps its size for whoever comes next
    ray_cluster.kill_node(node)
    killed = time.time()

    wait_until(lambda: records.after(killed), timeout=60, what="records after the node died")
    assert rek.describe_stream_processor(Name=name)["Status"] == "RUNNING"
    assert node_of(ray_cluster, name) not in (None, node)
    rek.stop_stream_processor(Name=name)
    wait_until(lambda: rek.describe_stream_processor(Name=name)["Status"] == "STOPPED", what="STOPPED")
