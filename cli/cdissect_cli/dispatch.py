"""Send shard-sized RPCs concurrently to every endpoint of a service, with deadlines and retries.

A service may be given as several endpoints (replicas) and each endpoint as a DNS name that
resolves to several addresses (a Kubernetes headless service): `connection` expands them into one
address each (`cdissect_common.clients.expand_endpoints`), and `ShardDispatcher` runs workers per
address that pull tasks from one shared queue, so a fast replica takes more shards. Every call
carries a deadline. UNAVAILABLE and DEADLINE_EXCEEDED are retried with the common backoff policy, each retry on the next address,
so a dead replica does not stall its shards. When a task finally fails, `ShardFailure` names the
shard, the service, the address and the cause, and no further tasks are started.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable

import grpc
from cdissect_common.retry import RetryPolicy, is_retryable_grpc

from cdissect_cli.errors import CliError, InputError


@dataclass
class ShardTask:
    """One RPC of a run: `call(stub, timeout_s)` does it; `what` names it in messages."""

    what: str
    call: Callable[[Any, float], Any]
    on_done: Callable[[Any], None] | None = None


class ShardFailure(CliError):
    """A shard RPC failed for good; the message names shard, service, address and cause."""

    def __init__(self, service: str, what: str, address: str, cause: BaseException, attempts: int) -> None:
        self.service, self.what, self.address, self.cause = service, what, address, cause
        if isinstance(cause, grpc.RpcError) and hasattr(cause, "code"):
            detail = f"{cause.code().name}: {cause.details()}"
            retryable = is_retryable_grpc(cause)
        else:
            detail, retryable = f"{type(cause).__name__}: {cause}", False
        tries = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if retryable else ""
        hint = (" — is the service running and reachable? (`cdissect status`; raise --retry-timeout "
                "or --deadline for slow starts)") if retryable else ""
        super().__init__(f"{what} failed on the {service} service at {address}{tries}: {detail}{hint}")
        # The service refused the request itself (unknown model or layer, a file that is not a
        # checkpoint): bad input, exit 2. Every other cause is a failure of valid work, exit 1.
        invalid = isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.INVALID_ARGUMENT
        self.exit_code = InputError.exit_code if invalid else CliError.exit_code


class ShardDispatcher:
    """Runs ShardTasks for one service over all its addresses, `per_address` calls in flight each."""

    def __init__(self, service: str, addresses: list[str], make_stub: Callable[[str], Any],
                 deadline_s: float, policy: RetryPolicy, per_address: int = 2) -> None:
        if not addresses:
            raise InputError(f"no endpoint for the {service} service: pass --{service} host:port, set "
                             f"CDISSECT_{service.upper()}, or give none at all to start local services")
        self.service = service
        self.addresses = list(addresses)
        self.stubs = [make_stub(address) for address in self.addresses]
        self.deadline_s = deadline_s
        self.policy = policy
        self.per_address = max(1, per_address)

    def call_one(self, task: ShardTask, home: int = 0, stop: threading.Event | None = None) -> Any:
        """Run one task with retries, moving to the next address on each retry (none once `stop` is set)."""
        attempt = [0]
        last_address = [self.addresses[home % len(self.addresses)]]

        def attempt_call() -> Any:
            index = (home + attempt[0]) % len(self.stubs)
            attempt[0] += 1
            last_address[0] = self.addresses[index]
            return task.call(self.stubs[index], self.deadline_s)

        try:
            result = self.policy.call(
                attempt_call, lambda err: is_retryable_grpc(err) and not (stop is not None and stop.is_set()),
                describe=f"{task.what} on {self.service}")
        except grpc.RpcError as err:
            raise ShardFailure(self.service, task.what, last_address[0], err, attempt[0]) from err
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

        n_workers = min(len(tasks), len(self.addresses) * self.per_address)
        threads = [threading.Thread(target=worker, args=(i % len(self.addresses),), daemon=True,
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
