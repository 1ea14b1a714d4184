"""Rejections of unknown names suggest the closest known ones; shard RPCs need a real shard ref."""
from __future__ import annotations

import grpc
import pytest

from cdissect.v1 import common_pb2
from cdissect_common.errors import ServiceError, require_shard_ref
from cdissect_common.suggest import closest_hint


def test_closest_hint_lists_near_names_best_first() -> None:
    assert closest_hint("resnt50", ["resnet50", "resnet101", "vit_b_16"]) == " Closest: resnet50, resnet101."


def test_closest_hint_is_empty_when_nothing_is_close() -> None:
    assert closest_hint("zzzz", ["resnet50", "vit_b_16"]) == ""


def test_shard_without_key_or_digest_is_invalid_argument() -> None:
    with pytest.raises(ServiceError) as err:
        require_shard_ref(common_pb2.Shard(index=3, ref=common_pb2.ArtifactRef(key="datasets/shards/x.tar")))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "registered dataset manifest" in err.value.message
    require_shard_ref(common_pb2.Shard(ref=common_pb2.ArtifactRef(key="k", sha256="ab" * 32)))
