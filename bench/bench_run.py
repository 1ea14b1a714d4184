"""Benchmark: the whole ``cdissect run`` on a Broden-sized synthetic probe set, models loaded.

Run by bench/gpu_check.sh on a GPU (``--images 63305``, Broden's size; goal: under 60 s) and
by its CPU half here with a small set; not a test. In a temporary folder it generates N 224×224
JPEGs (in parallel, one process per core), starts the three services with ``cdissect up`` (the
same processes as the embedded default; CDISSECT_DEVICE and CDISSECT_BATCH_SIZE as set, else
the per-device defaults), loads the models with untimed calls (ListLayers for the target,
EmbedConcepts of one word for CLIP), then times one ``cdissect run``: ``resnet50`` (random
weights) at the reference's five layers, a random-weight ViT-B/16 CLIP in OpenAI's layout
(fp16 on CUDA, as the reference), the shipped 20k concept set, soft-WPMI. The time includes
registering the probe set, both embedding stages, the activations and the labels of the five
layers. ``--json`` prints the figures (wall time and the CLI's per-stage timings) as one JSON
object on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import Bench, clip_checkpoints, make_probe_folder  # noqa: E402

GOAL_S = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=63305, help="probe images (default 63305, Broden's count)")
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    parser.add_argument("--clip-arch", default="ViT-B/16", help="random-weight CLIP architecture (default ViT-B/16)")
    parser.add_argument("--concepts", default="20k", help="shipped concept set (default 20k)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    args = parser.parse_args()
    import torch

    cuda = os.environ.get("CDISSECT_DEVICE", "auto") != "cpu" and torch.cuda.is_available()
    settings = argparse.Namespace(batch_size=int(os.environ.get("CDISSECT_BATCH_SIZE", "0")), threads=0,
                                  shard_size=args.shard_size, images=args.images,
                                  clip_precision="float16" if cuda else "float32")
    tmp = Path(tempfile.mkdtemp(prefix="cdissect-bench-run-"))
    bench = Bench(tmp, settings)
    try:
        t0 = time.perf_counter()
        workers = os.cpu_count() or 1
        chunk = -(-args.images // workers)
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(make_probe_folder, [tmp / "probe"] * workers,
                          [max(0, min(chunk, args.images - i * chunk)) for i in range(workers)],
                          [224] * workers, [0] * workers, [i * chunk for i in range(workers)]))
        generate_s = time.perf_counter() - t0
        from cdissect_cli.concepts import load_concept_set
        (tmp / "concepts.txt").write_text("\n".join(load_concept_set(args.concepts).words) + "\n")
        clip_path, _, clip_what = clip_checkpoints(tmp, shapes_clip=False, arch=args.clip_arch)
        print(f"bench-run: {args.images} images ({generate_s:.0f} s to generate), {clip_what} "
              f"({settings.clip_precision}), resnet50, concept set {args.concepts}, device "
              f"{'cuda' if cuda else 'cpu'}", flush=True)
        bench.up()
        from cdissect.v1 import activations_pb2, embedder_pb2
        t0 = time.perf_counter()
        bench.stub("activations").ListLayers(activations_pb2.ListLayersRequest(model="resnet50", weights="none"),
                                             timeout=600)
        bench.stub("embedder").EmbedConcepts(embedder_pb2.EmbedConceptsRequest(
            model=str(clip_path), concepts=["warm-up"], precision=settings.clip_precision), timeout=600)
        load_s = time.perf_counter() - t0
        results, _, wall = bench.run("resnet50", clip_path, tmp / "probe")
    finally:
        bench.down()
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {"images": args.images, "wall_s": wall, "timings": results["timings"], "model_load_s": load_s,
               "device": "cuda" if cuda else "cpu", "clip": clip_what, "clip_precision": settings.clip_precision,
               "goal_s": GOAL_S}
    print(f"cdissect run: {wall:.1f} s wall for {args.images} images (goal < {GOAL_S:.0f} s on a GPU); "
          f"stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in results["timings"].items()))
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
