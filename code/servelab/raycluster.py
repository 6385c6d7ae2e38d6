"""A real two-node Ray cluster on this machine, started and stopped the way servelab runs servers.

Each node is a ``ray start --block`` process under :mod:`servelab.guard`: the head (GCS, its
raylet, Ray's helper processes) and a worker node (its own raylet), each advertising
``--num-cpus=1`` and bound to 127.0.0.1 (``--node-ip-address``). Both use a temp dir of our own
and ports picked free, so another Ray on the machine is never touched, and nothing here ever
runs ``ray stop`` (which kills every Ray process on the machine, by name). The notebook's kernel
connects as the driver with an explicit address, and Serve starts with one HTTP proxy on the head,
on 127.0.0.1.

Ray puts each worker process (replicas, the proxy, the controller) in a process group of its own,
so the guard's kill of its group does not reach them; :meth:`LocalCluster.stop` kills every
recorded PID too, and on a killed kernel the workers exit when their raylet dies (the
kernel-kill test in ``tests/test_raycluster.py`` checks that nothing survives).

What Ray cannot be told to keep on loopback: its gRPC servers (GCS, raylets, the dashboard agent,
every worker, replicas included) listen on all interfaces; :func:`listening_beyond_loopback`
lists them from the live sockets. Taught in: chapters/05a_ray_serve.ipynb (and used by 05b, 05c).
"""

from __future__ import annotations

import os

# The driver (this process) resolves 127.0.0.1 to the machine's address unless told it is a
# one-machine cluster; must be set before ray is imported. The nodes must NOT inherit it: a worker
# node's `ray start --address` then refuses to join (NODE_ENV unsets it for them).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import logging
import shutil
import signal
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import psutil
import yaml

from servelab import servers

CONFIG_PATH = Path(__file__).with_name("apps") / "ray_mlp.yaml"
NODE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "",  # "" unsets it for the nodes (see above)
    # One proxy for the whole box: preferring the head's own replica would send it every request.
    "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
    # A loaded 2-core machine can take longer than Ray's default to start a node's agents.
    "RAY_agent_register_timeout_ms": "60000",
}
STARTED_TEXT = "Ray runtime started"
# How long a node's `ray start --block` gets after SIGTERM before its process group and every recorded
# PID are SIGKILLed. The worker node's exits in about 1.1 s on a 2-core EPYC; the head's never finished
# within 3 s (its controller and proxy outlived it even then). Nothing a node leaves behind needs a
# graceful stop: the temp dir is ours and removed, and the object store leaves no file in /dev/shm.
STOP_GRACE_S = 1.5
ROLES = ("replica", "proxy", "controller", "Ray system")


class ClusterError(RuntimeError):
    """A node did not start; the message has its log."""


def _node_command(temp_dir: str, gcs_port: int, *, head: bool, cpus: int) -> list[str]:
    ports = {name: servers.free_port() for name in ("node-manager-port", "object-manager-port",
             "dashboard-agent-grpc-port", "dashboard-agent-listen-port", "metrics-export-port",
             "runtime-env-agent-port")}  # fmt: skip
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address=127.0.0.1",
           f"--num-cpus={cpus}", f"--temp-dir={temp_dir}", "--object-store-memory=100000000",
           "--disable-usage-stats", *(f"--{name}={port}" for name, port in ports.items()),
           # The log monitor forwards worker logs to the driver, which we turn off (log_to_driver=False):
           # one Python process less per node, and a start-up that a busy machine can still finish.
           "--include-log-monitor=false"]  # fmt: skip
    if head:
        # --no-monitor: the autoscaler's monitor adds machines to a cluster; ours has a fixed two nodes.
        return cmd + ["--head", f"--port={gcs_port}", "--include-dashboard=false", "--no-monitor",
                      f"--ray-client-server-port={servers.free_port()}"]  # fmt: skip
    return cmd + [f"--address=127.0.0.1:{gcs_port}"]


def _wait_started(node: servers.Server, timeout_s: float) -> bool:
    """True once ``ray start`` says the node runs; False if it exited (e.g. an agent was too slow)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if STARTED_TEXT in node.log_path.read_text(errors="replace"):
            return True
        if node.guard.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def launch_node(temp_dir: str, gcs_port: int, *, head: bool, cpus: int = 1,
                env: Mapping[str, str] | None = None) -> servers.Server:
    """Start one node's ``ray start --block`` under the guard, without waiting for it."""
    return servers.Server(_node_command(temp_dir, gcs_port, head=head, cpus=cpus), port=gcs_port,
                          name="ray-head" if head else "ray-worker", env={**NODE_ENV, **(env or {})}, grace_s=STOP_GRACE_S)


def start_node(temp_dir: str, gcs_port: int, *, head: bool, cpus: int = 1, env: Mapping[str, str] | None = None,
               attempts: int = 3, timeout_s: float = 120.0,
               launched: servers.Server | None = None) -> tuple[servers.Server, int]:
    """Start one node (or wait for ``launched``) and retry when it fails to start. The node and the attempts."""
    for attempt in range(1, attempts + 1):
        node = launched or launch_node(temp_dir, gcs_port, head=head, cpus=cpus, env=env)
        launched = None
        if _wait_started(node, timeout_s):
            return node, attempt
        log = node.log_tail(8)
        node.stop()
    raise ClusterError(f"{node.name} did not start in {attempts} attempts:\n{log}")


def classify(process: psutil.Process) -> str:
    """A cluster process's role, from the title Ray gives its workers."""
    try:
        title = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "Ray system"
    if "ServeReplica:" in title:
        return "replica"
    if "ProxyActor" in title:
        return "proxy"
    if "ServeController" in title:
        return "controller"
    return "Ray system"  # GCS, raylets, agents, idle workers, the `ray start` processes


@dataclass
class LocalCluster:
    """Head and worker node, the driver connection and Serve's HTTP address; a context manager."""

    temp_dir: str
    gcs_port: int
    http_port: int
    head: servers.Server
    worker: servers.Server | None
    startup_s: dict[str, float] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def url(self) -> str:
        """Serve's HTTP proxy (on the head node)."""
        return f"http://127.0.0.1:{self.http_port}"

    def nodes(self) -> dict[str, servers.Server]:
        return {"head": self.head, **({"worker": self.worker} if self.worker else {})}

    def processes(self) -> list[psutil.Process]:
        """Every process of both nodes (worker processes included: they are the raylets' children)."""
        return [p for node in self.nodes().values() for p in node.processes()]

    def cpu_seconds(self) -> float:
        """CPU-seconds used so far by both nodes' process trees (duck-types :class:`servers.Server`)."""
        return sum(node.cpu_seconds() for node in self.nodes().values())

    def node_of(self, pid: int) -> str:
        """``head`` or ``worker``: whose process tree holds ``pid`` (``gone`` if neither)."""
        for name, node in self.nodes().items():
            if pid in node.pids:
                return name
        return "gone"

    def replica_pids(self) -> dict[int, str]:
        """PID → node of every live Serve replica process."""
        return {p.pid: name for name, node in self.nodes().items() for p in node.processes() if classify(p) == "replica"}

    def alive_pids(self) -> list[int]:
        return [pid for node in (self.head, self.worker) if node for pid in node.alive_pids()]

    def stop_worker_node(self) -> None:
        """Stop the worker node as `ray stop` would on it, but only our PIDs: SIGTERM its raylet, then the rest."""
        if self.worker is None:
            return
        raylets = [p for p in self.worker.processes() if "raylet" in " ".join(p.cmdline()[:1])]
        for raylet in raylets:
            raylet.send_signal(signal.SIGTERM)  # graceful: it tells the GCS it is leaving
        psutil.wait_procs(raylets, timeout=5)
        self.worker.stop()

    def stop(self) -> None:
        """Disconnect the driver, then stop both nodes (every recorded PID, by PID)."""
        import ray

        try:
            ray.shutdown()
        finally:
            # Both at once: each gets STOP_GRACE_S, then SIGKILL for whatever is left.
            nodes = [node for node in (self.worker, self.head) if node]
            with ThreadPoolExecutor(len(nodes) or 1) as pool:
                list(pool.map(servers.Server.stop, nodes))
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(*, cpus_per_node: int = 1, env: Mapping[str, str] | None = None, with_worker: bool = True) -> LocalCluster:
    """Start the head node, connect this process as the driver, start the worker node and Serve."""
    import ray
    from ray import serve

    temp_dir = tempfile.mkdtemp(prefix="rc5-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    gcs_port, times = servers.free_port(), {}
    t0 = time.monotonic()
    head, head_attempts = start_node(temp_dir, gcs_port, head=True, cpus=cpus_per_node, env=env)
    times["head node"] = time.monotonic() - t0
    cluster = LocalCluster(temp_dir, gcs_port, servers.free_port(), head, None, times, {"head": head_attempts})
    try:
        # The worker node boots while this process connects and starts Serve: on two cores the starts overlap.
        launched_at = time.monotonic()
        booting = launch_node(temp_dir, gcs_port, head=False, cpus=cpus_per_node, env=env) if with_worker else None
        cluster.worker = booting  # stopped with the cluster if anything below fails
        t0 = time.monotonic()
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.WARNING)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # no "Connecting to existing Serve app" per deploy
        times["driver connect"] = time.monotonic() - t0
        t0 = time.monotonic()
        serve.start(http_options={"host": "127.0.0.1", "port": cluster.http_port}, proxy_location="HeadOnly")
        times["serve.start"] = time.monotonic() - t0
        if booting is not None:
            cluster.worker, cluster.attempts["worker"] = start_node(temp_dir, gcs_port, head=False, cpus=cpus_per_node,
                                                                    env=env, launched=booting)  # fmt: skip
            wait_for_nodes(2)
            times["worker node"] = time.monotonic() - launched_at  # overlapped the two steps above
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_for_nodes(count: int, timeout_s: float = 60.0) -> int:
    """Wait until the GCS counts ``count`` live nodes; the count."""
    import ray

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = sum(n["Alive"] for n in ray.nodes())
        if alive >= count:
            return alive
        time.sleep(0.1)
    raise ClusterError(f"only {alive} of {count} nodes alive after {timeout_s:.0f} s")


# --------------------------------------------------------------------------- deployment


def read_config(path: Path = CONFIG_PATH) -> dict[str, Any]:
    """The Serve config file, validated by Serve's own schema (the one ``serve deploy`` uses)."""
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(Path(path).read_text())
    ServeDeploySchema.model_validate(config)
    return config


def deploy_config(path: Path = CONFIG_PATH, *, timeout_s: float = 120.0, **overrides: Any) -> float:
    """Deploy the config's first application the way ``serve deploy`` does; seconds until it ran.

    ``overrides`` replace fields of its first deployment (``num_replicas``, ``autoscaling_config``,
    ``user_config``, ``max_ongoing_requests``, ``health_check_period_s``, ...): the chapter's
    variations of the file. It returns once the replicas the new config asks for run and no others
    are left (a fixed ``num_replicas`` exactly; at least ``min_replicas`` under autoscaling).

    Why not ``serve.run``: Serve gives each ``serve.run`` a new random code version, so every call
    restarts every replica (7 s to change a ``user_config`` on a 2-core EPYC). A config goes to the
    controller's ``apply_config`` as ``serve deploy`` sends it (through the Serve client, whose Python
    handle Ray keeps in ``ray.serve.context``). The code version is then a hash of the import path,
    so Serve's lightweight updates stay lightweight: a changed ``user_config`` reaches the running
    replicas through ``reconfigure`` (0.5 s), scaling down keeps the other replica (2.5 s, not 10).
    """
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = read_config(path)
    deployment = {**config["applications"][0]["deployments"][0], **overrides}
    if "autoscaling_config" in overrides:
        deployment.pop("num_replicas", None)  # Serve refuses both at once
    config["applications"][0]["deployments"][0] = deployment
    t0 = time.monotonic()
    # The controller marks the application DEPLOYING before this returns; we poll it ourselves, every
    # 50 ms (the client's own blocking wait polls once a second).
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))
    autoscaling = deployment.get("autoscaling_config")
    wanted = int(autoscaling.get("initial_replicas") or autoscaling.get("min_replicas", 1)) if autoscaling \
        else int(deployment["num_replicas"])  # fmt: skip
    app = config["applications"][0]["name"]
    _wait_for_replicas(wanted, exact=not autoscaling, timeout_s=timeout_s, app=app, deployment=deployment["name"])
    return time.monotonic() - t0


def _wait_for_replicas(count: int, *, exact: bool, timeout_s: float, app: str, deployment: str) -> None:
    """Until the application runs with ``count`` running replicas (and, if ``exact``, no other)."""
    from ray import serve

    deadline, states = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)  # one controller round trip per poll
        phase = str(getattr(status.status, "value", status.status)) if status else ""
        if phase == "DEPLOY_FAILED":
            raise ClusterError(f"deploying {app} failed: {status.message}")
        states = _states_of(status, deployment)
        enough = states == {"RUNNING": count} if exact else states.get("RUNNING", 0) >= count
        if enough and phase == "RUNNING":
            return
        time.sleep(0.05)
    raise ClusterError(f"{app} did not reach {count} running replicas in {timeout_s:.0f} s: {states}")


@lru_cache(maxsize=None)
def config_names(path: Path = CONFIG_PATH) -> tuple[str, str]:
    """The config's first application and its first deployment, by name: what the chapter deploys."""
    application = yaml.safe_load(Path(path).read_text())["applications"][0]
    return application["name"], application["deployments"][0]["name"]


def _states_of(status: Any, deployment: str) -> dict[str, int]:
    """Replicas per state in one application's status, as ``serve.status()`` gives it (None: not deployed)."""
    if status is None or deployment not in status.deployments:
        return {}
    return {str(getattr(k, "value", k)): int(v) for k, v in status.deployments[deployment].replica_states.items()}


def replica_states(app: str | None = None, deployment: str | None = None) -> dict[str, int]:
    """How many replicas of the deployment are in each state (RUNNING, STARTING, ...), from the controller.

    Without names: the config file's first application and deployment.
    """
    from ray import serve

    default_app, default_deployment = config_names()
    return _states_of(serve.status().applications.get(app or default_app), deployment or default_deployment)



# --------------------------------------------------------------------------- what the cluster exposes


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket of a cluster process."""

    pid: int
    process: str
    address: str
    port: int


def listening_beyond_loopback(processes: list[psutil.Process]) -> list[Listener]:
    """Listening sockets of ``processes`` that accept connections from other machines (not 127.x / ::1)."""
    pids = {p.pid: p for p in processes}
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or conn.pid not in pids or not conn.laddr:
            continue
        host = conn.laddr.ip.removeprefix("::ffff:")
        if host.startswith("127.") or host == "::1":
            continue
        try:
            title = pids[conn.pid].cmdline()[0]
        except (psutil.NoSuchProcess, IndexError):
            continue
        found.append(Listener(conn.pid, Path(title.split()[0]).name, host, conn.laddr.port))
    return found


def port_is_loopback_only(port: int) -> bool:
    """True if ``port`` is bound on 127.0.0.1 and nothing answers it on the machine's other addresses."""
    addresses = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET}
    for address in addresses - {"127.0.0.1"}:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((address, port)) == 0:
                return False
    return True
