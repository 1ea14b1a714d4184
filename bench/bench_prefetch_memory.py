"""Benchmark: peak memory of a shard RPC against the shard's size (the prefetch queue is bounded).

Run by ``make bench-memory`` (and ``make bench``); not a test. For each shard size (default
1,000 and 10,000 images of 224×224 JPEG) a fresh process registers nothing and loads nothing
but what a service does: it opens a filesystem store holding one registered shard of that size,
loads the target (``mobilenet_v3_small``, random weights: a cheap forward, so the run is about
the pipeline and not the model; the images are still decoded and preprocessed to 224×224 float
tensors, 588 kB each), runs one probe forward, notes its resident memory, then serves one
``ComputeShardActivations`` call for layers ``features.0`` and ``classifier.3`` through the real
servicer (store read, prefetch workers, forward with hooks, artifact write) and reports its peak
resident memory (``ru_maxrss``) above that baseline.

If the prepared images were all held at once, a 10,000-image shard would need 5.9 GB for them
alone. With the bounded prefetch queue the peak should grow with the shard only by what the
shard's bytes take (the tar as read from the store plus the extracted images, about twice the
encoded size) and the outputs (a few floats per image), not by the decoded images. ``--json``
prints the figures as one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = "mobilenet_v3_small"
LAYERS = ["features.0", "classifier.3"]
DISTINCT = 400  # distinct images generated; larger shards repeat them under other names


def register(store_dir: Path, sizes: list[int]) -> dict[int, tuple[str, int]]:
    """One dataset per size, a single shard each; returns {size: (manifest JSON path, shard bytes)}."""
    from google.protobuf import json_format

    from cdissect_common.manifest import ImageSource, register_dataset
    from cdissect_common.store import open_store

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_pipeline import probe_jpegs

    store = open_store(f"file://{store_dir}")
    pool = probe_jpegs(DISTINCT)
    out = {}
    for n in sizes:
        images = [ImageSource(name=f"img_{i:06d}.jpg", data=pool[i % DISTINCT]) for i in range(n)]
        manifest = register_dataset(store, f"mem-{n}", images, shard_size=n)
        path = store_dir.parent / f"manifest-{n}.json"
        path.write_text(json_format.MessageToJson(manifest))
        out[n] = (str(path), len(store.get(manifest.shards[0].ref.key)))
    return out


def child(store_dir: str, manifest_path: str, batch_size: int, workers: int) -> None:
    """One shard RPC in this fresh process; prints a JSON line of figures."""
    import warnings

    warnings.filterwarnings("ignore")
    from google.protobuf import json_format

    from cdissect.v1 import activations_pb2, common_pb2
    from cdissect_activations.service import ActivationsServicer
    from cdissect_common.config import load_settings
    from cdissect_common.server import ServiceRuntime

    manifest = json_format.Parse(Path(manifest_path).read_text(), common_pb2.DatasetManifest())
    shard = manifest.shards[0]
    env = {"CDISSECT_STORE": f"file://{store_dir}", "CDISSECT_DEVICE": os.environ.get("CDISSECT_DEVICE", "cpu"),
           "CDISSECT_PORT": "0", "CDISSECT_METRICS_PORT": "0"}
    if batch_size:
        env["CDISSECT_BATCH_SIZE"] = str(batch_size)
    if workers:
        env["CDISSECT_PREFETCH_WORKERS"] = str(workers)
    runtime = ServiceRuntime("activations", load_settings("activations", env=env, config_file=os.devnull))
    servicer = ActivationsServicer(runtime)
    servicer._output_shapes(servicer.target(TARGET, "none"))  # load + one probe forward, as the warm-up does
    baseline = rss_now()
    start = time.perf_counter()
    response = servicer.ComputeShardActivations(activations_pb2.ComputeShardActivationsRequest(
        model=TARGET, weights="none", layers=LAYERS, shard=shard), None)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert [list(r.shape) for r in response.activations][0][0] == len(shard.images)
    print(json.dumps({"images": len(shard.images), "baseline_bytes": baseline,
                      "peak_bytes": peak, "seconds": seconds, "batch_size": servicer.batch_size,
                      "workers": runtime.settings.prefetch_workers or os.cpu_count()}))


def rss_now() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="shard sizes in images (default 1000,10000)")
    parser.add_argument("--batch-size", type=int, default=0, help="CDISSECT_BATCH_SIZE (default: the device's)")
    parser.add_argument("--workers", type=int, default=0, help="CDISSECT_PREFETCH_WORKERS (default: the cores)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.batch_size, args.workers)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="cdissect-bench-memory-"))
    rows = []
    try:
        manifests = register(tmp / "store", sizes)
        for n in sizes:
            manifest_path, shard_bytes = manifests[n]
            cmd = [sys.executable, __file__, "--child", str(tmp / "store"), manifest_path,
                   "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                raise SystemExit(f"the {n}-image run failed:\n{proc.stdout}\n{proc.stderr}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["shard_bytes"] = shard_bytes
            row["peak_above_baseline_bytes"] = row["peak_bytes"] - row["baseline_bytes"]
            rows.append(row)
            mib = {key: row[key] / 2**20 for key in ("shard_bytes", "peak_bytes", "baseline_bytes",
                                                     "peak_above_baseline_bytes")}
            print(f"{n:>6} images: shard {mib['shard_bytes']:7.1f} MiB, peak RSS {mib['peak_bytes']:7.0f} "
                  f"MiB = baseline {mib['baseline_bytes']:.0f} + {mib['peak_above_baseline_bytes']:.0f} "
                  f"MiB; {n / row['seconds']:.0f} img/s (batch {row['batch_size']}, {row['workers']} workers)",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    small, large = rows[0], rows[-1]
    growth = large["peak_above_baseline_bytes"] - small["peak_above_baseline_bytes"]
    shard_growth = large["shard_bytes"] - small["shard_bytes"]
    decoded = (large["images"] - small["images"]) * 3 * 224 * 224 * 4
    summary = {"rows": rows, "growth_bytes": growth, "shard_growth_bytes": shard_growth,
               "growth_per_shard_byte": growth / shard_growth if shard_growth else None,
               "decoded_growth_if_unbounded_bytes": decoded}
    print(f"\npeak growth from {small['images']} to {large['images']} images: {growth / 2**20:.0f} MiB for "
          f"{shard_growth / 2**20:.0f} MiB more shard bytes ({summary['growth_per_shard_byte'] or 0:.1f}× the shard); "
          f"holding every prepared image would add {decoded / 2**30:.1f} GiB")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
