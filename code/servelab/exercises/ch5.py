"""Checks for chapter 5's exercises (Ray Serve: replicas, batching, autoscaling, faults).

Each check prints a tick or a hint aimed at the usual mistake, and returns whether the answer was right.
Exercises are numbered within each notebook of the chapter (05a, 05b, 05c).
Taught in: chapters/05a_ray_serve.ipynb, chapters/05b_ray_autoscaling.ipynb, chapters/05c_ray_faults.ipynb.
"""

from __future__ import annotations

import math

from servelab.exercises import check


def _near(a: float, b: float, rel: float = 0.05) -> bool:
    return math.isclose(float(a), float(b), rel_tol=rel)


def expected_cpu_bound_throughput(cpu_ms_per_request: float, cores: int) -> float:
    """Requests per second that ``cores`` cores can pay for at ``cpu_ms_per_request`` each."""
    return cores * 1e3 / cpu_ms_per_request


def check_cpu_bound_throughput(answer: float | None, cpu_ms_per_request: float, cores: int) -> bool:
    """05a, exercise 1: the most requests/s the machine's cores can pay for, from the measured CPU per request."""
    expected = expected_cpu_bound_throughput(cpu_ms_per_request, cores)
    if answer is None or answer is Ellipsis:
        return check(answer, expected, name="CPU-bound throughput (req/s)")
    hint = "Each request costs that much CPU, wherever it is spent; the machine has `cores` cores to spend."
    if _near(answer, 1e3 / cpu_ms_per_request):
        hint = "That is what one core pays for; the whole cluster runs on every usable core."
    elif _near(answer, cores / cpu_ms_per_request):
        hint = "Mind the unit: the CPU per request is in milliseconds."
    elif _near(answer, cpu_ms_per_request * cores) or _near(answer, cpu_ms_per_request / cores):
        hint = "That is a time, not a rate: divide the core-milliseconds per second by the milliseconds per request."
    return check(answer, expected, rel_tol=0.05, name="CPU-bound throughput (req/s)", hint=hint)


def check_effective_batch(answer: int | None, max_batch_size: int, max_ongoing_requests: int) -> bool:
    """05a, exercise 2: the largest batch a replica can form with these two settings."""
    expected = min(max_batch_size, max_ongoing_requests)
    if answer is None or answer is Ellipsis:
        return check(answer, expected, name="largest batch")
    hint = "A batch is made of requests the replica holds at once. How many may it hold?"
    if answer == max_batch_size and max_batch_size > max_ongoing_requests:
        hint = "The router never gives a replica more than max_ongoing_requests at once, so the batch cannot fill."
    elif answer == max(max_batch_size, max_ongoing_requests):
        hint = "Both are limits: the smaller one wins."
    return check(answer, expected, name="largest batch", hint=hint)


def check_ongoing_at_rate(answer: float | None, rate: float, service_ms: float) -> bool:
    """05b, exercise 1: the requests one replica holds on average at ``rate``, by Little's law (L = λW, W = service)."""
    expected = rate * service_ms / 1e3
    if answer is None or answer is Ellipsis:
        return check(answer, expected, name="ongoing requests per replica")
    hint = "Little's law: requests held = arrival rate × time each is held."
    if _near(answer, rate * service_ms):
        hint = "Mind the unit: the service time is in milliseconds and the rate in requests per second."
    elif _near(answer, rate / service_ms * 1e3) or _near(answer, service_ms / rate):
        hint = "Multiply, do not divide: more requests per second, or longer ones, both mean more held at once."
    return check(answer, expected, rel_tol=0.05, name="ongoing requests per replica", hint=hint)


def target_ongoing_range(slo_ms: float, service_ms: float) -> tuple[int, int]:
    """The ``target_ongoing_requests`` that keep p99 within the SLO: ``(lowest sensible, highest safe)``.

    A replica with one CPU serves its requests one after another, so the last of N ongoing ones
    waits about N service times: N ≤ SLO / service. Half that leaves room for Poisson bursts.
    """
    highest = max(1, math.floor(slo_ms / service_ms))
    return max(1, math.floor(highest / 2)), highest


def check_target_ongoing(answer: float | None, slo_ms: float, service_ms: float) -> bool:
    """05b, exercise 2: a ``target_ongoing_requests`` for a p99 objective, given one request's service time."""
    low, high = target_ongoing_range(slo_ms, service_ms)
    if answer is None or answer is Ellipsis:
        return check(answer, high, name="target_ongoing_requests")
    value = float(answer)
    if low <= value <= high:
        print(f"✓ target_ongoing_requests: {value:g} works: about {value:g} × {service_ms:.0f} ms = "
              f"{value * service_ms:.0f} ms for the last one in line, within {slo_ms:g} ms.")  # fmt: skip
        return True
    if value > high:
        hint = (f"The replica serves one request at a time: with {value:g} ongoing, the last waits about "
                f"{value:g} × {service_ms:.0f} ms, past the objective.")  # fmt: skip
    elif value > 0:
        hint = "Safe, but it scales out before a replica is busy: you pay for idle replicas. You may aim higher."
    else:
        hint = "The target is a number of requests per replica, so it must be positive."
    print(f"✗ target_ongoing_requests: {value:g} is not it. {hint}")
    return False


def check_max_failed(answer: int | None, max_ongoing_requests: int) -> bool:
    """05c, exercise 1: at most how many requests fail when one replica process is killed."""
    if answer is None or answer is Ellipsis:
        return check(answer, max_ongoing_requests, name="most requests that can fail")
    hint = "Which requests were on the killed replica when it died, and does Serve send them again?"
    if answer == 0:
        hint = "Serve does not retry a request already sent to a replica that dies: those fail."
    elif answer == 1:
        hint = "That is a gunicorn sync worker, which holds one request. A replica holds more at once."
    elif answer > max_ongoing_requests:
        hint = "Only the dead replica's requests fail; the router never gave it more than max_ongoing_requests."
    return check(answer, max_ongoing_requests, name="most requests that can fail", hint=hint)


def check_survivor_utilisation(answer: float | None, rate: float, capacity: float) -> bool:
    """05c, exercise 2: how busy the replica that survives is, once it alone carries ``rate`` (0..1)."""
    expected = rate / capacity
    if answer is None or answer is Ellipsis:
        return check(answer, expected, name="utilisation of the surviving replica")
    hint = "Utilisation = the rate it must serve / the rate it can serve."
    if _near(answer, expected / 2):
        hint = "That is each replica's share while both ran. After the kill, one replica gets all the traffic."
    elif _near(answer, 100 * expected):
        hint = "Give it as a fraction of 1, not a percentage."
    elif _near(answer, 1 / expected):
        hint = "Upside down: the rate it must serve goes on top."
    return check(answer, expected, rel_tol=0.05, name="utilisation of the surviving replica", hint=hint)


def overhead_share(cpu_ms_by_role: dict[str, float]) -> float:
    """The fraction of a request's CPU spent outside the replicas (proxy, controller, Ray's own processes)."""
    total = sum(cpu_ms_by_role.values())
    return (total - cpu_ms_by_role.get("replica", 0.0)) / total


def check_overhead_share(answer: float | None, cpu_ms_by_role: dict[str, float]) -> bool:
    """05a, exercise 3: the share of Ray's CPU per request that is not the model (0..1)."""
    expected = overhead_share(cpu_ms_by_role)
    name = "share of the CPU per request outside the model"
    if answer is None or answer is Ellipsis:
        return check(answer, expected, name=name)
    hint = "Everything but the replicas' milliseconds, over all the milliseconds of a request."
    if _near(answer, 1 - expected):
        hint = "That is the model's share (the replicas). The question asks for the rest."
    elif _near(answer, 100 * expected):
        hint = "Give it as a fraction of 1, not a percentage."
    elif _near(answer, cpu_ms_by_role.get("proxy", 0.0) / sum(cpu_ms_by_role.values())):
        hint = "The proxy is most of it, but the controller and Ray's system processes are not the model either."
    return check(answer, expected, rel_tol=0.05, name=name, hint=hint)


def excess_requests(rate: float, capacity: float, seconds: float) -> float:
    """Requests that arrive beyond what one replica serves, over ``seconds`` at ``rate``."""
    return max(0.0, rate - capacity) * seconds


def check_excess_requests(answer: float | None, rate: float, capacity: float, seconds: float) -> bool:
    """05b, exercise 3: how many requests one replica cannot serve before the second one runs."""
    expected = excess_requests(rate, capacity, seconds)
    name = "requests beyond one replica's capacity"
    if answer is None or answer is Ellipsis:
        return check(answer, expected, name=name)
    hint = "Per second, the replica serves its capacity; the rest of the arrivals is the excess. Then: for how long?"
    if _near(answer, rate * seconds):
        hint = "That counts every arrival. The replica still serves its capacity; only the rest is too much."
    elif _near(answer, rate - capacity):
        hint = "That is the excess per second. Multiply by the seconds until the second replica ran."
    return check(answer, expected, rel_tol=0.1, name=name, hint=hint)


def replicas_for_one_failure(rate: float, capacity: float, max_utilisation: float) -> int:
    """The fewest replicas that carry ``rate`` at most ``max_utilisation`` busy with one of them dead (N + 1)."""
    needed = rate / (max_utilisation * capacity)
    return math.ceil(needed - 1e-9) + 1  # the tolerance: 3.0000001 replicas are 3


def check_replicas_for_failure(answer: int | None, rate: float, capacity: float, max_utilisation: float) -> bool:
    """05c, exercise 3: how many replicas to run so that losing one keeps the others within ``max_utilisation``."""
    expected = replicas_for_one_failure(rate, capacity, max_utilisation)
    name = "replicas to run"
    if answer is None or answer is Ellipsis:
        return check(answer, expected, name=name)
    hint = "Size for the moment after a death: the replicas that are left must carry all of it."
    if answer == expected - 1:
        hint = "Enough while all run; but when one dies, the others are too busy. Add the one that may die."
    elif answer == math.ceil(rate / capacity - 1e-9) + 1 and answer != expected:
        hint = "That runs the survivors at 100%: keep them at the utilisation asked for."
    return check(answer, expected, name=name, hint=hint)
