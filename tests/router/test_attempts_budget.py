"""The migration budget with exact sequences: only failures that implicate a request count.

A replica death that takes several streams at once never counts; the request's own engine
error does (INTERNAL after two replicas), and so does being the one stream a replica died
with (INTERNAL after two: the poison rule); more than ``max_migrations`` implicating failures
end it with UNAVAILABLE; ``max_moves`` bounds only a request without a deadline.
"""

from __future__ import annotations

import grpc
import pytest

from ttdist.router.attempts import Attempts, Failure
from ttdist.runtime.request_checks import ModelCard
from ttdist.runtime.routing_table import ReplicaEntry, RoutingTable

UNAVAILABLE, INTERNAL, UNKNOWN = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN
DEADLINE = 1e12    # a request with a deadline far away


def replica(i: int, pid: int = 1) -> ReplicaEntry:
    return ReplicaEntry(replica_id=f"replica-{i}", address=f"127.0.0.1:{7000 + i}", state="ready", pid=pid)


def run(sequence: list[tuple[int, Failure]], deadline: float | None = DEADLINE, **kw):
    """Feed ``sequence`` (replica index, failure); the index of the failure that ended the
    request and its error, or (None, None) when it survived them all."""
    attempts = Attempts(max_migrations=3, **kw)
    for k, (i, failure) in enumerate(sequence):
        error = attempts.failed(replica(i, pid=100 + k), failure, deadline)
        if error is not None:
            return k, error
    return None, None


def test_deaths_that_take_every_stream_never_count():
    shared = [(k % 3, Failure(UNAVAILABLE, "the replica ended its stream", died_with=6)) for k in range(20)]
    engine_wide = [(k % 3, Failure(INTERNAL, "engine failed", died_with=4)) for k in range(20)]
    assert run(shared) == (None, None)
    assert run(engine_wide) == (None, None)


def test_an_unreachable_replica_does_not_count():
    assert run([(k % 3, Failure(UNAVAILABLE, "connect failed", died_with=0)) for k in range(20)]) == (None, None)


def test_own_engine_error_twice_is_internal_whatever_came_between():
    seq = [(0, Failure(UNAVAILABLE, "gone", 5)), (1, Failure(INTERNAL, "bad step")),
           (2, Failure(UNAVAILABLE, "gone", 3)), (0, Failure(UNKNOWN, "bad again"))]
    k, error = run(seq)
    assert k == 3 and error.code == INTERNAL
    assert str(error) == ("the engine failed on this request on 2 replicas; not retried further "
                          "(replica-1: bad step | replica-0: bad again)")


def test_the_one_stream_a_replica_died_with_twice_is_not_sent_to_a_third():
    seq = [(0, Failure(UNAVAILABLE, "stream broke", 1)), (1, Failure(UNAVAILABLE, "gone", 7)),
           (1, Failure(INTERNAL, "engine died", 1))]
    k, error = run(seq)
    assert k == 2 and error.code == INTERNAL
    assert str(error) == ("this request was the only stream on 2 replicas that failed; not sent to another "
                          "(replica-0: stream broke | replica-1: engine died)")


def test_more_than_max_migrations_implicating_failures_is_unavailable():
    seq = [(0, Failure(UNAVAILABLE, "gone", 9)), (0, Failure(None, "ended without a result")),
           (1, Failure(grpc.StatusCode.ABORTED, "aborted")), (2, Failure(UNAVAILABLE, "gone", 2)),
           (1, Failure(INTERNAL, "bad step")), (2, Failure(grpc.StatusCode.DATA_LOSS, "lost"))]
    k, error = run(seq)
    assert k == 5 and error.code == UNAVAILABLE
    assert str(error) == "gave up after 4 replica failures that implicate this request"


def test_max_moves_bounds_only_a_request_without_a_deadline():
    shared = [(k % 3, Failure(UNAVAILABLE, "gone", 2)) for k in range(40)]
    k, error = run(shared, deadline=None, max_moves=32)
    assert k == 32 and error.code == UNAVAILABLE and "no deadline" in str(error)
    assert run(shared, deadline=DEADLINE, max_moves=32) == (None, None)


def test_a_request_avoids_each_incarnation_it_failed_on_not_the_replica_id():
    attempts = Attempts(max_migrations=3)
    assert attempts.failed(replica(0, pid=1), Failure(UNAVAILABLE, "gone", 3)) is None
    table = RoutingTable(ModelCard("m", 100, 64), replicas=(replica(0, pid=1), replica(1, pid=1)))
    assert attempts.avoid(table) == {"replica-0"}
    restarted = RoutingTable(ModelCard("m", 100, 64), replicas=(replica(0, pid=2), replica(1, pid=1)))
    assert attempts.avoid(restarted) == frozenset()


@pytest.mark.parametrize("failure, counts", [
    (Failure(UNAVAILABLE, "", 0), False), (Failure(UNAVAILABLE, "", 1), True), (Failure(UNAVAILABLE, "", 2), False),
    (Failure(INTERNAL, "", 0), True), (Failure(INTERNAL, "", 1), True), (Failure(INTERNAL, "", 3), False),
    (Failure(None, "", 0), True),
])
def test_which_failures_implicate(failure, counts):
    assert failure.implicates is counts
