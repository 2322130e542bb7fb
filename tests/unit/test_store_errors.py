"""Which etcd errors are passing ones (the CNI answers 11, "try again later")."""

import grpc

from datastore.store import transient


def test_an_election_or_a_read_that_timed_out_server_side_is_transient() -> None:
    # seen from a 3-member etcd while its leader was killed (get / list during the election)
    assert transient(grpc.StatusCode.UNKNOWN, "context deadline exceeded")
    assert transient(grpc.StatusCode.UNKNOWN, "etcdserver: leader changed")
    assert transient(grpc.StatusCode.UNKNOWN, "etcdserver: request timed out")
    assert transient(grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: too many requests")


def test_a_real_refusal_is_not_transient() -> None:
    assert not transient(grpc.StatusCode.UNKNOWN, "etcdserver: mvcc: required revision has "
                                                  "been compacted")
    assert not transient(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
    assert not transient(grpc.StatusCode.INVALID_ARGUMENT, "context deadline exceeded")
    assert not transient(grpc.StatusCode.UNKNOWN, None)
