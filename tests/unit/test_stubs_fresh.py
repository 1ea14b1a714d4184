"""The committed gRPC stubs must match the protos (a proto edit without `make protos` fails here)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_match_protos() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_has_a_stub() -> None:
    from cdissect.v1 import activations_pb2_grpc, embedder_pb2_grpc, labeler_pb2_grpc

    assert {"EmbedImageShard", "EmbedConcepts", "EmbedTexts", "EmbedImages", "ListModels"} <= set(
        dir(embedder_pb2_grpc.EmbedderServicer))
    assert {"ComputeShardActivations", "ListLayers", "ListModels"} <= set(dir(activations_pb2_grpc.ActivationsServicer))
    assert "LabelLayer" in dir(labeler_pb2_grpc.LabelerServicer)
