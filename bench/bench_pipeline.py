"""Benchmark: images/s of the embedder and the activations service through the whole path
(``cdissect run`` → gRPC → object store) against a bare in-process forward loop.

Run by ``make bench-pipeline`` (and ``make bench``); not a test. Everything runs offline in a
temporary folder that is deleted at the end:

- probe set: N generated 224×224 JPEGs (coloured shapes on noise) in class subfolders;
- target: torchvision ``resnet50`` with ``--weights none`` (random weights);
- CLIP: a random-weight RN50 CLIP (a real CLIP's size and cost) written in OpenAI's TorchScript
  layout, or with ``--shapes-clip`` the shipped 64-pixel shapes-world CLIP (so fast that its stage
  lasts a fraction of a second and the ratio is mostly noise) (a traced
  ``clip.model.CLIP`` saved with ``torch.jit.save``, as tests/conftest.py does). A second file
  with the same weights but another digest (the TorchScript archive re-saved under another name)
  costs exactly the same to run and gets its own content keys: it is how the embedder stage is
  timed on its own (below);
- concepts: a 40-word file; a fresh filesystem store (``file://`` in the temp folder), a private
  ``XDG_CACHE_HOME`` (state file and service logs of ``cdissect up``) and runs folder.

Method. ``cdissect run`` sends the embedder's and the activations service's shards at the same
time, so on a shared CPU each stage's wall time would include the other's work. The benchmark
therefore starts the three services once with ``cdissect up`` (the same processes, started the
same way, as the embedded default) and runs the real CLI three times, arranged so that in each
timed run exactly one of the two stages computes and the other one is entirely reused:

1. ``resnet18`` + CLIP  — prepares the store: image embeddings of CLIP (and resnet18 activations).
2. ``resnet50`` + CLIP  — the image embeddings all exist, so only the activations stage computes:
   its wall time (the CLI's per-stage timing in results.json: from the stage's start to its last
   shard's reply, i.e. RPCs, shard reads, decoding, preprocessing, forward, hooks and artifact
   writes) gives the activations path img/s. This is also the reuse check: another target on the
   same probe set with the same CLIP must compute zero image embeddings — the CLI's reuse counts
   in results.json and the embedder's ``cdissect_images_total`` must not move.
3. ``resnet50`` + CLIP' — the activations all exist, so only the embedder computes: its stage
   wall time gives the embedder path img/s.

Before runs 2 and 3 the model of the timed stage is loaded in its service by an untimed call
(ListLayers for the target, EmbedConcepts with the run's concept words and precision for the
CLIP, which also makes the run's text embeddings a reuse), so the timed stage measures
throughput, not model loading. Right before each timed run the bare loop of the same model runs
in this process with the same batch size, thread count and device, on the same image files:
decode with ``cdissect_common.images.decode_image``, the model's own preprocessing, stack,
forward (``backend.encode_images`` for CLIP, ``model(batch)`` under no_grad for the target), one
batch after the other, nothing overlapped. Like the services' forward passes (which run in a gRPC
handler thread), the bare loop runs on a non-main thread: on this 2-core machine, with another
process keeping one core busy, the same 2-thread resnet50 forward measured ~3.5 img/s on the main
thread but ~6.5 img/s on a worker thread, which would have made every ratio ~2. The ratio is
path img/s / bare img/s, goal >= 0.8; both figures come from the same invocation, minutes apart,
so background load on a shared machine moves them (rerun to see the spread).
The services' ``cdissect_stage_duration_seconds`` histograms (scraped from their /metrics
before and after each run) give the service-side breakdown: shard read, forward/encode, artifact
write, and the rest of the path's time (RPC, dispatch, waiting) as what remains.

Options: ``--images N``, ``--batch-size B`` (services' CDISSECT_BATCH_SIZE and the bare loop),
``--shard-size S``, ``--threads T`` (torch intra-op threads of the bare loop and OMP/MKL
threads of the services; default: torch's default in both), ``--target``, ``--quick``.
Exits 1 if the reuse check fails (not for a ratio below the goal).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GOAL = 0.8
RN50_CLIP = (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12)
WORDS = ("red green blue yellow orange purple white black grey brown pink cyan circle square triangle "
         "star stripe dot grid wave noise sky grass water wood metal stone fur glass cloud road car dog "
         "cat tree house face hand text edge").split()
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}
ROOT = Path(__file__).resolve().parents[1]
CDISSECT = str(Path(sys.executable).with_name("cdissect"))


# ----------------------------------------------------------------------------- inputs
def make_probe_folder(root: Path, n: int, size: int = 224, seed: int = 0) -> list[Path]:
    """n JPEGs of coloured squares/circles on noise, in class subfolders (ImageFolder layout)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        name = list(COLOURS)[i % len(COLOURS)]
        pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        img = Image.fromarray(pixels, "RGB")
        draw = ImageDraw.Draw(img)
        a, b = sorted(int(v) for v in rng.integers(8, size - 8, 2))
        box = (a, a, max(b, a + 16), max(b, a + 16))
        (draw.ellipse if i % 2 else draw.rectangle)(box, fill=COLOURS[name])
        path = root / name / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def clip_checkpoints(tmp: Path, shapes_clip: bool) -> tuple[Path, Path, str]:
    """(CLIP file, same weights under another digest, description)."""
    import torch

    path, what = None, ""
    if shapes_clip:
        from cdissect_shapes.zoo import clip_checkpoint
        path, what = Path(clip_checkpoint()), "shipped shapes-world CLIP"
    else:
        import clip
        from clip.model import CLIP

        torch.manual_seed(0)
        model = CLIP(*RN50_CLIP).eval()
        traced = torch.jit.trace(model, (torch.randn(1, 3, 224, 224), clip.tokenize(["a photo"])), check_trace=False)
        path = tmp / "rn50-clip.pt"
        torch.jit.save(traced, str(path))
        what = "random-weight RN50 CLIP (OpenAI TorchScript layout)"
    twin = tmp / "clip-twin.pt"
    try:  # a TorchScript archive records its file name: re-saved under another name, the digest differs
        torch.jit.save(torch.jit.load(str(path), map_location="cpu"), str(twin))
    except RuntimeError:  # a plain state dict (clip.load takes both): another pickle protocol
        torch.save(torch.load(str(path), map_location="cpu", weights_only=True), str(twin), pickle_protocol=3)
    from cdissect_common.downloads import sha256_file
    if sha256_file(path, remember=False) == sha256_file(twin, remember=False):
        raise SystemExit("could not make a second CLIP file with another digest; cannot isolate the embedder stage")
    return path, twin, what


# ----------------------------------------------------------------------------- bare loops
def bare_loop(files: list[Path], batch: int, preprocess, forward) -> dict:
    """Decode → preprocess → stack → forward, batch after batch; img/s and forward seconds."""
    import torch
    from cdissect_common.images import decode_image

    items = [(p.name, p.read_bytes()) for p in files]
    fwd = 0.0
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        tensors = torch.stack([preprocess(decode_image(name, data)) for name, data in items[i:i + batch]])
        t = time.perf_counter()
        forward(tensors)
        fwd += time.perf_counter() - t
    seconds = time.perf_counter() - start
    return {"img_s": len(items) / seconds, "seconds": seconds, "forward_s": fwd}


def on_worker_thread(fn, *args, threads: int = 0) -> dict:
    """Run fn(*args) on a fresh non-main thread, as the services run their forward passes in a gRPC
    handler thread (see the module docstring: on this contended machine the main thread was slower)."""
    import torch

    def call():
        if threads:
            torch.set_num_threads(threads)
        return fn(*args)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bare") as pool:
        return pool.submit(call).result()


def bare_target(name: str, files: list[Path], batch: int, device) -> dict:
    import torch
    from cdissect_activations.zoo import load_target

    target = load_target(name, "none", device)
    model = target.model

    @torch.no_grad()
    def forward(x):
        model(x.to(device)).cpu()

    from PIL import Image

    warm = target.preprocess(Image.new("RGB", (224, 224), (127, 127, 127)))
    forward(warm.unsqueeze(0))  # as the service's ListLayers probe forward
    out = bare_loop(files, batch, target.preprocess, forward)
    del target, model
    return out


def bare_clip(path: Path, files: list[Path], batch: int, device) -> dict:
    from cdissect_embedder.backends.registry import load_backend

    backend = load_backend(str(path), device, "float32")
    out = bare_loop(files, batch, backend.preprocess, backend.encode_images)
    del backend
    return out


# ----------------------------------------------------------------------------- services
class Bench:
    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.args = args
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("CDISSECT_EMBEDDER", "CDISSECT_ACTIVATIONS", "CDISSECT_LABELER", "CDISSECT_CONFIG")}
        # model_dirs: the untimed direct EmbedConcepts call names the CLIP file by path.
        self.env.update({"XDG_CACHE_HOME": str(tmp / "xdg"), "CDISSECT_STORE": f"file://{tmp / 'store'}",
                         "CDISSECT_MODEL_DIRS": str(tmp),
                         "CDISSECT_RUNS_DIR": str(tmp / "runs"), "CDISSECT_BATCH_SIZE": str(args.batch_size),
                         "PYTHONWARNINGS": "ignore"})
        if args.threads:
            self.env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
        self.state_file = tmp / "xdg" / "cdissect" / "local-services.json"
        self.services: dict = {}

    def cli(self, *argv: str, timeout: float = 1800) -> str:
        proc = subprocess.run([CDISSECT, *argv], env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise SystemExit(f"`cdissect {' '.join(argv)}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def up(self) -> None:
        self.cli("up", timeout=300)
        self.services = json.loads(self.state_file.read_text())["services"]

    def down(self) -> None:
        if not self.state_file.exists():
            return
        try:
            subprocess.run([CDISSECT, "down"], env=self.env, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        for svc in self.services.values():  # whatever `down` left behind, by pid
            try:
                os.kill(int(svc["pid"]), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stub(self, service: str):
        from cdissect_common.clients import make_channel, make_stub
        from cdissect_common.config import load_settings

        settings = load_settings()
        return make_stub(service, make_channel(f"127.0.0.1:{self.services[service]['port']}", settings))

    def metrics(self) -> dict[tuple, float]:
        """{(service, metric sample name, stage or ''): value} of both compute services."""
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[tuple, float] = {}
        for service in ("embedder", "activations"):
            url = f"http://127.0.0.1:{self.services[service]['metrics_port']}/metrics"
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    if s.name in ("cdissect_images_total", "cdissect_stage_duration_seconds_sum"):
                        out[(service, s.name, s.labels.get("stage", ""))] = s.value
        return out

    def run(self, model: str, clip: Path) -> tuple[dict, dict, float]:
        """One `cdissect run`; (results.json, metric deltas, wall seconds)."""
        argv = ["run", "--model", model, "--weights", "none", "--probe-set", str(self.tmp / "probe"),
                "--concept-set", str(self.tmp / "concepts.txt"), "--clip-model", str(clip),
                "--shard-size", str(self.args.shard_size), "--no-progress"]
        if self.args.images < 100:
            argv += ["--param", f"top_k={self.args.images}"]
        before = self.metrics()
        start = time.perf_counter()
        stdout = self.cli(*argv)
        wall = time.perf_counter() - start
        after = self.metrics()
        run_dir = next(line.split(":", 1)[1].strip() for line in stdout.splitlines()
                       if line.startswith("run folder:"))
        results = json.loads((Path(run_dir) / "results.json").read_text())
        delta = {k: v - before.get(k, 0.0) for k, v in after.items()}
        return results, delta, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None, help="probe images (default 128; quick 32)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default 32; quick 16)")
    parser.add_argument("--shard-size", type=int, default=None, help="images per shard (default 64; quick 16)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    parser.add_argument("--target", default="resnet50", help="timed target model (default resnet50)")
    parser.add_argument("--other-target", default="resnet18", help="target of the reuse check's first run")
    parser.add_argument("--quick", action="store_true", help="32 images: a fast smoke run")
    parser.add_argument("--shapes-clip", action="store_true",
                        help="time the shipped 64-pixel shapes-world CLIP instead of a random RN50 CLIP")
    args = parser.parse_args()
    args.images = args.images or (32 if args.quick else 128)
    args.batch_size = args.batch_size or (16 if args.quick else 32)
    args.shard_size = args.shard_size or (16 if args.quick else 64)
    t_start = time.perf_counter()
    import warnings
    warnings.filterwarnings("ignore")

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from cdissect_activations.zoo import resolve_device
    device = resolve_device(os.environ.get("CDISSECT_DEVICE", "auto"))

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="cdissect-bench-"))
    bench = Bench(tmp, args)
    try:
        files = make_probe_folder(tmp / "probe", args.images)
        (tmp / "concepts.txt").write_text("\n".join(WORDS) + "\n")
        clip_a, clip_b, clip_what = clip_checkpoints(tmp, args.shapes_clip)
        print(f"pipeline benchmark: {args.images} images ({args.images // args.shard_size + bool(args.images % args.shard_size)} "
              f"shards of {args.shard_size}), batch {args.batch_size}, device {device}, torch threads "
              f"{torch.get_num_threads()} (bench) / {args.threads or 'default'} (services), {os.cpu_count()} CPUs",
              flush=True)
        print(f"target {args.target} (random weights), CLIP: {clip_what}", flush=True)

        bench.up()
        print(f"run 1: {args.other_target} + CLIP (prepares the image embeddings)", flush=True)
        res1, d1, wall1 = bench.run(args.other_target, clip_a)

        from cdissect.v1 import activations_pb2, embedder_pb2
        from cdissect_cli.concepts import load_concept_set
        bench.stub("activations").ListLayers(  # loads the target in the service (untimed)
            activations_pb2.ListLayersRequest(model=args.target, weights="none"), timeout=600)
        print(f"bare loop: {args.target}", flush=True)
        bare_act = on_worker_thread(bare_target, args.target, files, args.batch_size, device, threads=args.threads)
        print(f"run 2: {args.target} + CLIP (activations stage alone; reuse check)", flush=True)
        res2, d2, wall2 = bench.run(args.target, clip_a)

        bench.stub("embedder").EmbedConcepts(embedder_pb2.EmbedConceptsRequest(  # loads CLIP' (untimed)
            model=str(clip_b), concepts=list(load_concept_set(str(tmp / "concepts.txt")).words),
            precision="float32"), timeout=600)
        print("bare loop: CLIP", flush=True)
        bare_emb = on_worker_thread(bare_clip, clip_a, files, args.batch_size, device, threads=args.threads)
        print(f"run 3: {args.target} + CLIP' (embedder stage alone)", flush=True)
        res3, d3, wall3 = bench.run(args.target, clip_b)
    finally:
        bench.down()
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.images
    act_s, emb_s = res2["timings"]["activations"], res3["timings"]["image embeddings"]
    rows = [("embedder", n / emb_s, bare_emb["img_s"], "image embeddings", res3, d3, "encode_images", "embedder"),
            ("activations", n / act_s, bare_act["img_s"], "activations", res2, d2, "forward", "activations")]
    print()
    print(f"{'stage':<12} {'path img/s':>10} {'bare img/s':>10} {'ratio':>6} {'goal':>6}")
    for name, path_ips, bare_ips, *_ in rows:
        ok = "ok" if path_ips / bare_ips >= GOAL else "BELOW"
        print(f"{name:<12} {path_ips:>10.2f} {bare_ips:>10.2f} {path_ips / bare_ips:>6.2f} {'>=' + str(GOAL):>6} {ok}")
    print()
    print("where the time goes (seconds; service side from cdissect_stage_duration_seconds):")
    for name, path_ips, bare_ips, stage, res, d, compute, svc in rows:
        read = d.get((svc, "cdissect_stage_duration_seconds_sum", "read_shard"), 0.0)
        comp = d.get((svc, "cdissect_stage_duration_seconds_sum", compute), 0.0)
        write = d.get((svc, "cdissect_stage_duration_seconds_sum", "store_write"), 0.0)
        bare = bare_emb if svc == "embedder" else bare_act
        print(f"  {name}: path stage {res['timings'][stage]:.1f} = shard reads {read:.1f} + {compute} {comp:.1f} "
              f"+ artifact writes {write:.1f} + rest (decode/preprocess not overlapped, RPC, dispatch) "
              f"{res['timings'][stage] - read - comp - write:.1f}; bare loop {bare['seconds']:.1f} "
              f"(forward {bare['forward_s']:.1f}, decode+preprocess {bare['seconds'] - bare['forward_s']:.1f})")
    print(f"  run walls: run 1 {wall1:.1f} s (both stages at once, models loaded in it), run 2 {wall2:.1f} s, "
          f"run 3 {wall3:.1f} s (CLI start, probe set check, labels included)")

    reuse = res2["reused"]["image embeddings"]
    images_delta = d2.get(("embedder", "cdissect_images_total", ""), 0.0)
    first = res1["reused"]["image embeddings"]
    passed = reuse["computed"] == 0 and reuse["reused"] == reuse["total"] and images_delta == 0 and first["computed"] > 0
    print()
    print(f"reuse check: run 2 ({args.target}) after run 1 ({args.other_target}), same probe set and CLIP: "
          f"image-embedding shards computed {reuse['computed']}, reused {reuse['reused']}/{reuse['total']} "
          f"(run 1 computed {first['computed']}); embedder images embedded during run 2: {images_delta:.0f} "
          f"→ {'PASS' if passed else 'FAIL'}")
    print(f"benchmark wall time {time.perf_counter() - t_start:.0f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
