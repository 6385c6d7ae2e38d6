"""The local Ray cluster: two real nodes on loopback, replicas on both, JSON errors, and no Ray
process outlives what started it, even a SIGKILLed notebook kernel. Slow (a Ray cluster starts in
10 s on a quiet 2-core machine, far longer on a busy one), so one cluster serves several checks."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request

from servelab import raycluster
from test_servers import all_dead

SMALL_MODEL = {"SERVELAB_MODEL_WIDTH": "256", "SERVELAB_MODEL_DEPTH": "2"}


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_config_file_is_valid_for_serve_deploy() -> None:
    config = raycluster.read_config()
    deployment = config["applications"][0]["deployments"][0]
    assert config["applications"][0]["import_path"] == "servelab.apps.ray_mlp:app"
    assert deployment["name"] == "MLP" and deployment["num_replicas"] == 2


def test_two_nodes_replicas_on_both_errors_are_json_and_stop_leaves_nothing() -> None:
    with raycluster.start(env=SMALL_MODEL) as cluster:
        assert raycluster.wait_for_nodes(2) == 2
        raycluster.deploy_config()
        assert set(cluster.replica_pids().values()) == {"head", "worker"}
        status, answer = post(cluster.url + "/predict", b'{"batch": 2}')
        assert status == 200 and answer["pid"] in cluster.replica_pids() and len(answer["top"]) == 2
        assert post(cluster.url + "/predict", b"not json")[0] == 400
        status, answer = post(cluster.url + "/predict", b'{"batch": 0}')
        assert status == 422 and "batch" in answer["error"]
        assert post(cluster.url + "/nowhere", b"{}")[0] == 404
        with urllib.request.urlopen(cluster.url + "/health", timeout=30) as resp:
            assert json.load(resp)["servelab"].startswith(os.path.dirname(os.path.dirname(raycluster.__file__)))
        assert raycluster.port_is_loopback_only(cluster.http_port)
        # A changed config is a lightweight update (not serve.run's restart of every replica): the replica
        # that stays keeps its process, and a new user_config reaches it through reconfigure.
        before = set(cluster.replica_pids())
        raycluster.deploy_config(num_replicas=1, max_ongoing_requests=8,
                                 user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.05})
        assert raycluster.replica_states() == {"RUNNING": 1} and set(cluster.replica_pids()) & before
        status, answer = post(cluster.url + "/predict", b'{"batch": 1}')
        assert status == 200 and answer["pid"] in before and answer["server_batch"] == 1
        pids = cluster.alive_pids()
    assert all_dead(pids), "Ray processes outlived LocalCluster.stop()"


def test_killed_kernel_leaves_no_ray_process() -> None:
    """The case that matters: a reader's kernel is killed outright while the cluster serves."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    outputs: list[str] = []
    try:
        code = ("import os, json\nfrom servelab import raycluster\n"
                f"cluster = raycluster.start(env={SMALL_MODEL!r})\nraycluster.deploy_config()\n"
                "print(json.dumps({'kernel': os.getpid(), 'pids': [p.pid for p in cluster.processes()],"
                " 'replicas': list(cluster.replica_pids())}))")  # fmt: skip
        reply = kc.execute_interactive(code, timeout=500, output_hook=lambda m: outputs.append(
            m["content"]["text"]) if m["msg_type"] == "stream" and m["content"]["name"] == "stdout" else None)  # fmt: skip
        assert reply["content"]["status"] == "ok", reply["content"]
        info = json.loads([line for line in "".join(outputs).splitlines() if line.startswith("{")][-1])
        assert len(info["replicas"]) == 2 and set(info["replicas"]) <= set(info["pids"])
        os.kill(info["kernel"], signal.SIGKILL)
        assert all_dead(info["pids"], timeout=30), "Ray processes outlived their SIGKILLed kernel"
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
