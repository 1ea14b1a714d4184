"""Generate the Python gRPC stubs in services/common/cdissect/v1 from protos/cdissect/v1.

`--check` regenerates into a temporary folder and fails if the committed stubs differ,
so a proto edit without `make protos` cannot land.
"""
from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "services" / "common"
PACKAGE_DIR = Path("cdissect") / "v1"


def generate(out_root: Path) -> list[Path]:
    """Run protoc on every .proto file; return the generated files relative to out_root."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out_root}", f"--pyi_out={out_root}",
            f"--grpc_python_out={out_root}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on " + ", ".join(protos))
    return sorted(p.relative_to(out_root) for p in (out_root / PACKAGE_DIR).glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs are stale")
    args = parser.parse_args()
    if not args.check:
        for f in generate(OUT_ROOT):
            print("wrote", OUT_ROOT / f)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        committed = sorted(p.relative_to(OUT_ROOT) for p in (OUT_ROOT / PACKAGE_DIR).glob("*_pb2*.py*"))
        stale = [str(f) for f in fresh if not (OUT_ROOT / f).exists()
                 or not filecmp.cmp(Path(tmp) / f, OUT_ROOT / f, shallow=False)]
        extra = [str(f) for f in committed if f not in fresh]
    if stale or extra:
        print("stubs out of date with protos/: " + ", ".join(stale + extra) + " (run `make protos`)")
        return 1
    print("stubs match protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
