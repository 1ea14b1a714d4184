"""Send shard-sized RPCs concurrently to every replica of a service, with deadlines and retries.

A service may be given as several endpoints, and each endpoint may be a DNS name with several
addresses (a Kubernetes headless Service). `ShardDispatcher` keeps one stub per endpoint; the
channel under it resolves the name itself and round-robins calls over its addresses
(`cdissect_common.clients`), following pods that restart on new addresses. Workers (two per
replica, see `connection`) pull tasks from one shared queue, so a fast replica takes more shards.

Every call carries a deadline. UNAVAILABLE and DEADLINE_EXCEEDED are retried with the common
backoff policy, for `--retry-timeout` seconds from the failure (so a shard that ran long before
its pod restarted is still retried), each retry on the next endpoint. A "busy" answer (the
service's in-flight cap) is waited on for up to the call's deadline. A service's report that the
object store is down is not retried: the service has already retried the store for its budget.
When a task finally fails, `ShardFailure` names the shard, the service, the endpoint and the
cause (or the store), and no further tasks are started.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

import grpc
from cdissect_common.retry import CAUSE_STORE_UNAVAILABLE, RetryPolicy, grpc_cause, is_busy_grpc, is_retryable_grpc

from cdissect_cli.errors import CliError, InputError


@dataclass
class ShardTask:
    """One RPC of a run: `call(stub, timeout_s)` does it; `what` names it in messages."""

    what: str
    call: Callable[[Any, float], Any]
    on_done: Callable[[Any], None] | None = None


# A service's answers that mean "the request is wrong": bad input, exit code 2 (others: 1).
BAD_INPUT_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED})


class ShardFailure(CliError):
    """A shard RPC failed for good; the message names shard, service, endpoint and cause."""

    def __init__(self, service: str, what: str, address: str, cause: BaseException, attempts: int) -> None:
        self.service, self.what, self.address, self.cause = service, what, address, cause
        if isinstance(cause, grpc.RpcError) and hasattr(cause, "code") and grpc_cause(cause) == CAUSE_STORE_UNAVAILABLE:
            super().__init__(f"{what} failed: {cause.details()} (reported by the {service} service at {address})")
            return
        if isinstance(cause, grpc.RpcError) and hasattr(cause, "code"):
            detail = f"{cause.code().name}: {cause.details()}"
            retryable = is_retryable_grpc(cause) or is_busy_grpc(cause)
        else:
            detail, retryable = f"{type(cause).__name__}: {cause}", False
        tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if retryable else ""
        hint = (" — is the service running and reachable? (`cdissect status`; raise --retry-timeout "
                "or --deadline for slow starts)") if retryable else ""
        super().__init__(f"{what} failed on the {service} service at {address}{tries}: {detail}{hint}")
        # The service refused the request itself (unknown model or layer, a file that is not a
        # checkpoint, a path outside its model folders): bad input, exit 2. Every other cause is a
        # failure of valid work, exit 1.
        refused = isinstance(cause, grpc.RpcError) and hasattr(cause, "code") and cause.code() in BAD_INPUT_CODES
        self.exit_code = InputError.exit_code if refused else CliError.exit_code


class ShardDispatcher:
    """Runs ShardTasks for one service over its endpoints, `workers` calls in flight in all."""

    def __init__(self, service: str, endpoints: list[str], make_stub: Callable[[str], Any],
                 deadline_s: float, policy: RetryPolicy, workers: int | None = None) -> None:
        """`workers` defaults to two per endpoint."""
        if not endpoints:
            raise InputError(f"no endpoint for the {service} service: pass --{service} host:port, set "
                             f"CDISSECT_{service.upper()}, or give none at all to start local services")
        self.service = service
        self.endpoints = list(endpoints)
        self.stubs = [make_stub(endpoint) for endpoint in self.endpoints]
        self.deadline_s = deadline_s
        self.policy = policy
        self.workers = max(1, workers if workers is not None else 2 * len(self.endpoints))

    def call_one(self, task: ShardTask, home: int = 0, stop: threading.Event | None = None) -> Any:
        """Run one task with retries, moving to the next endpoint on each retry (none once `stop` is set)."""
        attempt = [0]
        last_endpoint = [self.endpoints[home % len(self.endpoints)]]

        def attempt_call() -> Any:
            index = (home + attempt[0]) % len(self.stubs)
            attempt[0] += 1
            last_endpoint[0] = self.endpoints[index]
            return task.call(self.stubs[index], self.deadline_s)

        def stopped() -> bool:
            return stop is not None and stop.is_set()

        try:
            result = self.policy.call(
                attempt_call, lambda err: is_retryable_grpc(err) and not stopped(),
                describe=f"{task.what} on {self.service}",
                busy=lambda err: is_busy_grpc(err) and not stopped(), busy_seconds=self.deadline_s)
        except grpc.RpcError as err:
            raise ShardFailure(self.service, task.what, last_endpoint[0], err, attempt[0]) from err
        if task.on_done is not None:
            task.on_done(result)
        return result

    def run(self, tasks: list[ShardTask], stop: threading.Event | None = None) -> list[Any]:
        """Run all tasks concurrently; results in task order.

        The first failure sets `stop` (shared with other dispatchers of the same run, so they
        start no new shard either) and is raised once the calls in flight have returned.
        """
        work: "queue.Queue[tuple[int, ShardTask]]" = queue.Queue()
        for item in enumerate(tasks):
            work.put(item)
        results: list[Any] = [None] * len(tasks)
        errors: list[BaseException] = []
        stop = stop if stop is not None else threading.Event()

        def worker(home: int) -> None:
            while not stop.is_set():
                try:
                    index, task = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    results[index] = self.call_one(task, home, stop)
                except BaseException as err:  # noqa: BLE001 - reported to the caller below
                    errors.append(err)
                    stop.set()

        n_workers = min(len(tasks), self.workers)
        threads = [threading.Thread(target=worker, args=(i % len(self.endpoints),), daemon=True,
                                    name=f"{self.service}-{i}") for i in range(n_workers)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException:
            stop.set()  # interrupted: workers start no new task and stop retrying
            raise
        if errors:
            raise errors[0]
        if stop.is_set() and any(r is None for r in results):
            raise CliError(f"{self.service}: stopped because another part of the run failed")
        return results
