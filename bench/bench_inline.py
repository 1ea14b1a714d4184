"""Benchmark: many small inline callers against one batching caller, on the embedder's EmbedImages.

Run by ``make bench-inline`` (and ``make bench``); not a test. Other projects call the
embedder's inline RPCs with a few items each. The embedder batches concurrent inline calls on the
server (``cdissect_common.batching``); this measures what that buys:

- ``batched``:  one client sends EmbedImages calls of 32 images each, one after the other;
- ``small``:    32 clients (threads, one channel each) send one image per call, concurrently;
- ``unbatched`` (with ``--unbatched``): the same 32 small callers against a second embedder
  started with ``CDISSECT_INLINE_BATCH_MAX=1`` (every call its own forward pass), for contrast.

Goal: small / batched >= 0.8 images/s. One embedder process (``python -m cdissect_embedder``,
filesystem store in a temporary folder, CPU unless CDISSECT_DEVICE says otherwise) serves a random
RN50 CLIP in OpenAI's TorchScript layout (``bench_pipeline.clip_checkpoints``), warmed before
timing (CDISSECT_MODEL). Images are generated 224×224 JPEGs, every call sends other bytes than
the call before (no caching anywhere to hit). Each mode sends ``--rounds`` × 32 images; the modes
alternate ``--repeats`` times and the ratio is the median of the per-repeat ratios, so background
load on a shared machine moves a repeat, not the result. ``--json`` prints the figures as one JSON
object on the last line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from bench_pipeline import clip_checkpoints, make_probe_folder  # noqa: E402
from deploy.rehearse.loopback import free_port, wait_serving  # noqa: E402

GOAL = 0.8
CLIENTS = 32


class Embedder:
    """One embedder process on loopback ports, serving ``model``."""

    def __init__(self, tmp: Path, model: Path, batch_size: int, extra: dict[str, str]) -> None:
        self.port, metrics = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDISSECT_")}
        env.update({"CDISSECT_CONFIG": os.devnull, "CDISSECT_HOST": "127.0.0.1", "CDISSECT_PORT": str(self.port),
                    "CDISSECT_METRICS_PORT": str(metrics), "CDISSECT_STORE": f"file://{tmp / 'store'}",
                    "CDISSECT_MODEL": str(model), "CDISSECT_BATCH_SIZE": str(batch_size),
                    "CDISSECT_DEVICE": os.environ.get("CDISSECT_DEVICE", "auto"), "PYTHONWARNINGS": "ignore",
                    **extra})
        self.log = open(tmp / f"embedder-{self.port}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "cdissect_embedder"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait_serving(self, timeout: float = 600) -> None:
        wait_serving(self.proc, self.port, "", timeout, "the embedder", lambda: Path(self.log.name).read_text())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def stubs(port: int, n: int) -> list:
    """n stubs, each on its own channel (as n separate client processes would have)."""
    from cdissect_common.clients import make_channel, make_stub
    from cdissect_common.config import load_settings

    settings = load_settings(env={}, config_file=os.devnull)
    return [make_stub("embedder", make_channel(f"127.0.0.1:{port}", settings)) for _ in range(n)]


def run_batched(stub, images: list[bytes], rounds: int) -> float:
    """One client, calls of CLIENTS images; images/s."""
    from cdissect.v1 import embedder_pb2

    start = time.perf_counter()
    for r in range(rounds):
        call = images[r * CLIENTS:(r + 1) * CLIENTS]
        out = stub.EmbedImages(embedder_pb2.EmbedImagesRequest(images=call), timeout=600)
        assert len(out.vectors) == len(call)
    return rounds * CLIENTS / (time.perf_counter() - start)


def run_small(client_stubs: list, images: list[bytes], rounds: int) -> float:
    """CLIENTS concurrent clients, one image per call, ``rounds`` calls each; images/s."""
    from cdissect.v1 import embedder_pb2

    barrier = threading.Barrier(len(client_stubs) + 1)

    def client(i: int) -> None:
        barrier.wait()
        for r in range(rounds):
            out = client_stubs[i].EmbedImages(embedder_pb2.EmbedImagesRequest(images=[images[r * CLIENTS + i]]),
                                              timeout=600)
            assert len(out.vectors) == 1

    with ThreadPoolExecutor(len(client_stubs)) as pool:
        futures = [pool.submit(client, i) for i in range(len(client_stubs))]
        barrier.wait()
        start = time.perf_counter()
        for fut in futures:
            fut.result()
        return rounds * CLIENTS / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="calls of 32 images per mode and repeat (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="alternations of the modes (default 3)")
    parser.add_argument("--batch-size", type=int, default=32, help="the embedder's CDISSECT_BATCH_SIZE (default 32)")
    parser.add_argument("--unbatched", action="store_true",
                        help="also time the small callers against an embedder that does not batch them")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    args = parser.parse_args()
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="cdissect-bench-inline-"))
    servers: list[Embedder] = []
    try:
        clip_path, _, clip_what = clip_checkpoints(tmp, shapes_clip=False)
        needed = args.rounds * CLIENTS * args.repeats * (3 if args.unbatched else 2)
        files = make_probe_folder(tmp / "images", needed, seed=1)
        pool = [p.read_bytes() for p in files]
        batching = Embedder(tmp, clip_path, args.batch_size, {})
        servers.append(batching)
        unbatched = None
        if args.unbatched:
            unbatched = Embedder(tmp, clip_path, args.batch_size, {"CDISSECT_INLINE_BATCH_MAX": "1"})
            servers.append(unbatched)
        for server in servers:
            server.wait_serving()
        print(f"inline benchmark: {CLIENTS} callers × 1 image vs 1 caller × {CLIENTS} images, {args.rounds} rounds, "
              f"{args.repeats} repeats; CLIP: {clip_what}; {os.cpu_count()} CPUs", flush=True)
        one = stubs(batching.port, 1)[0]
        many = stubs(batching.port, CLIENTS)
        many_unbatched = stubs(unbatched.port, CLIENTS) if unbatched else []
        run_batched(one, pool[:CLIENTS], 1)  # warm the channels and the path (untimed)
        run_small(many, pool[:CLIENTS], 1)
        per_repeat = []
        offset = 0

        def take() -> list[bytes]:
            nonlocal offset
            chunk = pool[offset:offset + args.rounds * CLIENTS]
            offset += len(chunk)
            return chunk

        for r in range(args.repeats):
            row = {"batched_img_s": run_batched(one, take(), args.rounds),
                   "small_img_s": run_small(many, take(), args.rounds)}
            if unbatched:
                row["unbatched_img_s"] = run_small(many_unbatched, take(), args.rounds)
            row["ratio"] = row["small_img_s"] / row["batched_img_s"]
            per_repeat.append(row)
            print(f"[{r}] " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    summary = {key: statistics.median(row[key] for row in per_repeat) for key in per_repeat[0]}
    summary.update({"small_vs_batched": summary.pop("ratio"), "clients": CLIENTS, "rounds": args.rounds,
                    "repeats": args.repeats, "cpus": os.cpu_count(), "per_repeat": per_repeat,
                    "wall_s": time.perf_counter() - t_start})
    print()
    print(f"one caller, {CLIENTS} images per call: {summary['batched_img_s']:.2f} img/s")
    print(f"{CLIENTS} callers, 1 image per call:   {summary['small_img_s']:.2f} img/s "
          f"(ratio {summary['small_vs_batched']:.3f}, median of per-repeat ratios; goal >= {GOAL})")
    if "unbatched_img_s" in summary:
        print(f"the same without server-side batching: {summary['unbatched_img_s']:.2f} img/s")
    print(f"benchmark wall time {summary['wall_s']:.0f} s")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
