"""Benchmark: images/s of the embedder and the activations service through the whole path
(``cdissect run`` → gRPC → object store) against the forward passes alone and a bare loop.

Run by ``make bench-pipeline`` (and ``make bench``); not a test. Everything runs offline in a
temporary folder that is deleted at the end:

- probe sets: N generated 224×224 JPEGs (coloured shapes on noise) in class subfolders, a fresh
  set per repeat (another seed: new digests, so nothing is reused across repeats);
- target: torchvision ``resnet50`` with ``--weights none`` (random weights);
- CLIP: a random-weight RN50 CLIP (a real CLIP's size and cost) written in OpenAI's TorchScript
  layout, or with ``--shapes-clip`` the shipped 64-pixel shapes-world CLIP (so fast that its stage
  lasts a fraction of a second and the ratio is mostly noise). A second file with the same weights
  but another digest (the TorchScript archive re-saved under another name) costs exactly the same
  to run and gets its own content keys: it is how the embedder stage is timed on its own (below);
- concepts: a 40-word file; a fresh filesystem store (``file://`` in the temp folder), a private
  ``XDG_CACHE_HOME`` (state file and service logs of ``cdissect up``) and runs folder.

Method. ``cdissect run`` sends the embedder's and the activations service's shards at the same
time, so on a shared CPU each stage's wall time would include the other's work. The benchmark
therefore starts the three services once with ``cdissect up`` (the same processes, started the
same way, as the embedded default) and, in each repeat, runs the real CLI three times on that
repeat's probe set, arranged so that in each timed run exactly one of the two stages computes:

1. ``resnet18`` + CLIP  — prepares the store: image embeddings of CLIP (and resnet18 activations).
2. ``resnet50`` + CLIP  — the image embeddings all exist, so only the activations stage computes:
   its wall time (the CLI's per-stage timing in results.json: from the stage's start to its last
   shard's reply, i.e. RPCs, shard reads, decoding, preprocessing, forward, hooks and artifact
   writes) gives the activations path img/s. This is also the reuse check: another target on the
   same probe set with the same CLIP must compute zero image embeddings — the CLI's reuse counts
   in results.json and the embedder's ``cdissect_images_total`` must not move.
3. ``resnet50`` + CLIP' — the activations all exist, so only the embedder computes: its stage
   wall time gives the embedder path img/s.

The models of the timed stages are loaded in the services by untimed calls first (ListLayers for
the target, EmbedConcepts with the run's concept words for CLIP', which also makes the run's text
embeddings a reuse), so the timed stages measure throughput, not model loading. Right before each
timed run, the same model runs with the same batch size, thread count and device on the same
images, two ways, each in a fresh process started like a service (model loaded and warmed by one
forward of a full batch first, untimed), on a non-main thread like the services' gRPC handler
threads (on this 2-core machine, with another process keeping one core busy, a 2-thread resnet50
forward measured ~3.5 img/s on the main thread but ~6.5 img/s on a worker thread):

- forward only: the batches decoded and preprocessed beforehand, untimed; only the forward
  passes (``backend.encode_images`` for CLIP, ``model(batch)`` under no_grad for the target) are
  timed. path / forward-only (goal >= 0.95) is what decoding, RPCs and the store cost on top of
  the device's work once decoding overlaps the forward passes;
- bare loop: decode with ``cdissect_common.images.decode_image``, the model's preprocessing,
  stack, forward, one batch after the other, nothing overlapped (goal path / bare >= 0.8).

Each figure is the median over ``--repeats`` repeats (default 3); each repeat measures forward
only, bare loop and path back to back, so a burst of background load on a shared machine moves
one repeat, not the median. The services' ``cdissect_stage_duration_seconds`` histograms (scraped
from their /metrics before and after each run) give the service-side breakdown: shard read,
forward/encode, artifact write, and the rest of the path's time (the first batch's decoding, RPC,
dispatch) as what remains; ``<stage>_service_forward_share`` (the service's forward seconds over
the path's seconds, both from the same run) is the one figure that load differences between
processes cannot move. ``--json`` prints every figure as one JSON object on the last line
(``embedder_vs_forward``, ``activations_vs_forward``, ``embedder_vs_bare``, ``activations_vs_bare``,
``reuse_ok``, the medians per stage and each repeat's figures).

Options: ``--images N`` (per repeat), ``--repeats R``, ``--batch-size B`` (services'
CDISSECT_BATCH_SIZE and the loops here), ``--shard-size S``, ``--threads T`` (torch intra-op
threads of the loops here and OMP/MKL threads of the services; default: torch's default in both),
``--target``, ``--quick``, ``--json``. Exits 1 if the reuse check fails (not for a ratio below a goal).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GOAL_BARE = 0.8
GOAL_FORWARD = 0.95
# clip.model.CLIP(...) arguments of OpenAI's published architectures (random weights here).
CLIP_ARCHS = {"RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
              "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)}
WORDS = ("red green blue yellow orange purple white black grey brown pink cyan circle square triangle "
         "star stripe dot grid wave noise sky grass water wood metal stone fur glass cloud road car dog "
         "cat tree house face hand text edge").split()
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}
ROOT = Path(__file__).resolve().parents[1]
CDISSECT = str(Path(sys.executable).with_name("cdissect"))


# ----------------------------------------------------------------------------- inputs
def draw_probe_image(i: int, rng, size: int = 224):
    """Probe image number i: a coloured square or circle (by i) on dark noise; (class name, PIL image)."""
    import numpy as np
    from PIL import Image, ImageDraw

    name = list(COLOURS)[i % len(COLOURS)]
    img = Image.fromarray(rng.integers(0, 90, (size, size, 3), dtype=np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    a, b = sorted(int(v) for v in rng.integers(8, size - 8, 2))
    box = (a, a, max(b, a + 16), max(b, a + 16))
    (draw.ellipse if i % 2 else draw.rectangle)(box, fill=COLOURS[name])
    return name, img


def make_probe_folder(root: Path, n: int, size: int = 224, seed: int = 0, start: int = 0) -> list[Path]:
    """n JPEGs of coloured squares/circles on noise, in class subfolders (ImageFolder layout),
    numbered from ``start`` (so several calls can fill one folder in parallel)."""
    import numpy as np

    rng = np.random.default_rng([seed, start])
    paths = []
    for i in range(start, start + n):
        name, img = draw_probe_image(i, rng, size)
        path = root / name / f"img_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def probe_jpegs(n: int, size: int = 224, seed: int = 0) -> list[bytes]:
    """n probe images (as make_probe_folder draws them) as JPEG bytes, ~10-20 kB each at 224 pixels."""
    import io

    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        draw_probe_image(i, rng, size)[1].save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def clip_checkpoints(tmp: Path, shapes_clip: bool, arch: str = "RN50") -> tuple[Path, Path, str]:
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
        model = CLIP(*CLIP_ARCHS[arch]).eval()
        traced = torch.jit.trace(model, (torch.randn(1, 3, 224, 224), clip.tokenize(["a photo"])), check_trace=False)
        path = tmp / f"{arch.replace('/', '-').lower()}-clip.pt"
        torch.jit.save(traced, str(path))
        what = f"random-weight {arch} CLIP (OpenAI TorchScript layout)"
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
def bare_loop(items: list[tuple[str, bytes]], batch: int, preprocess, forward) -> dict:
    """Decode → preprocess → stack → forward, batch after batch, nothing overlapped; img/s."""
    import torch
    from cdissect_common.images import decode_image

    fwd = 0.0
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        tensors = torch.stack([preprocess(decode_image(name, data)) for name, data in items[i:i + batch]])
        t = time.perf_counter()
        forward(tensors)
        fwd += time.perf_counter() - t
    seconds = time.perf_counter() - start
    return {"img_s": len(items) / seconds, "seconds": seconds, "forward_s": fwd}


def forward_only_loop(items: list[tuple[str, bytes]], batch: int, preprocess, forward, device=None) -> dict:
    """The forward passes alone: the same batches decoded, preprocessed and (on a GPU) copied to the
    device beforehand, untimed."""
    import torch
    from cdissect_common.images import decode_image

    batches = []
    for i in range(0, len(items), batch):
        images = [decode_image(name, data) for name, data in items[i:i + batch]]
        batches.append(torch.stack([preprocess(img) for img in images]).to(device or "cpu"))
    start = time.perf_counter()
    for tensors in batches:
        forward(tensors)
    seconds = time.perf_counter() - start
    return {"img_s": len(items) / seconds, "seconds": seconds}


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


def loop_figures(kind: str, stage: str, probe: Path, clip_path: Path, args: argparse.Namespace) -> dict:
    """One loop (``forward`` only or ``bare``) of one stage's model, in this process: load the model
    (target, or the CLIP in ``args.clip_precision``), one warm-up forward, then the timed loop over
    the probe folder's images on a non-main thread."""
    import torch

    from cdissect_activations.zoo import resolve_device
    device = resolve_device(os.environ.get("CDISSECT_DEVICE", "auto"))
    if stage == "activations":
        from cdissect_activations.zoo import load_target

        target = load_target(args.target, "none", device)
        preprocess = target.preprocess

        @torch.no_grad()
        def forward(x):
            target.model(x.to(device)).cpu()
    else:
        from cdissect_embedder.backends.registry import load_backend

        backend = load_backend(str(clip_path), device, args.clip_precision)
        backend.image_batch_size = 1 << 30  # one forward per batch, as the embedder does
        preprocess, forward = backend.preprocess, backend.encode_images
    items = [(p.name, p.read_bytes()) for p in sorted(probe.rglob("*.jpg"))]
    # Warm up with one full batch (untimed): the first pass at a new batch shape sets up kernels
    # and memory, which a service that has served a batch before has done already.
    from cdissect_common.images import decode_image
    warm = [decode_image(name, data) for name, data in items[:args.batch_size]]
    on_worker_thread(forward, torch.stack([preprocess(img) for img in warm]), threads=args.threads)
    if kind == "forward":
        return on_worker_thread(forward_only_loop, items, args.batch_size, preprocess, forward, device,
                                threads=args.threads)
    return on_worker_thread(bare_loop, items, args.batch_size, preprocess, forward, threads=args.threads)


def loop_in_child(kind: str, stage: str, probe: Path, clip_path: Path, args: argparse.Namespace) -> dict:
    """``loop_figures`` in a fresh process, started like a service (so neither this benchmark's
    process state nor the services' favours one side)."""
    cmd = [sys.executable, __file__, "--child-loop", kind, stage, str(probe), str(clip_path), "--target",
           args.target, "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--clip-precision",
           args.clip_precision]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        raise SystemExit(f"the {kind} loop of {stage} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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

    def run(self, model: str, clip: Path, probe: Path) -> tuple[dict, dict, float]:
        """One `cdissect run`; (results.json, metric deltas, wall seconds)."""
        argv = ["run", "--model", model, "--weights", "none", "--probe-set", str(probe),
                "--concept-set", str(self.tmp / "concepts.txt"), "--clip-model", str(clip),
                "--shard-size", str(self.args.shard_size), "--clip-precision", self.args.clip_precision,
                "--no-progress"]
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


def median(values: list[float]) -> float:
    return statistics.median(values)


def one_repeat(bench: "Bench", args: argparse.Namespace, r: int, clip_a: Path, clip_b: Path,
               concepts: list[str]) -> dict:
    """Both stages once on a fresh probe folder (seed r), each as forward-only, bare loop and path."""
    from cdissect.v1 import embedder_pb2

    probe = bench.tmp / f"probe-{r}"
    make_probe_folder(probe, args.images, seed=r)
    out: dict = {"repeat": r}
    print(f"[{r}] run 1: {args.other_target} + CLIP (prepares the image embeddings)", flush=True)
    res1, _, wall1 = bench.run(args.other_target, clip_a, probe)
    first = res1["reused"]["image embeddings"]
    for stage in ("activations", "embedder"):
        print(f"[{r}] {stage}: forward only, bare loop, path", flush=True)
        fwd = loop_in_child("forward", stage, probe, clip_a, args)
        bare = loop_in_child("bare", stage, probe, clip_a, args)
        if stage == "activations":  # CLIP embeddings all exist: only the activations stage computes
            res, delta, wall = bench.run(args.target, clip_a, probe)
            timing = res["timings"]["activations"]
            reuse = res["reused"]["image embeddings"]
            images_delta = delta.get(("embedder", "cdissect_images_total", ""), 0.0)
            out["reuse_ok"] = bool(reuse["computed"] == 0 and reuse["reused"] == reuse["total"] and images_delta == 0
                                   and first["computed"] > 0)
            out["reuse"] = {"run1_computed": first["computed"], "run2_computed": reuse["computed"],
                            "run2_reused": reuse["reused"], "total": reuse["total"], "images_embedded": images_delta}
            compute = "forward"
        else:  # CLIP' (same weights, other digest): only the embedder computes
            bench.stub("embedder").EmbedConcepts(embedder_pb2.EmbedConceptsRequest(  # loads CLIP' (untimed)
                model=str(clip_b), concepts=concepts, precision=args.clip_precision), timeout=600)
            res, delta, wall = bench.run(args.target, clip_b, probe)
            timing = res["timings"]["image embeddings"]
            compute = "encode_images"
        service = "embedder" if stage == "embedder" else "activations"
        path_ips = args.images / timing
        out[stage] = {
            "path_img_s": path_ips, "bare_img_s": bare["img_s"], "forward_img_s": fwd["img_s"],
            "vs_bare": path_ips / bare["img_s"], "vs_forward": path_ips / fwd["img_s"], "path_s": timing,
            "bare_s": bare["seconds"], "bare_forward_s": bare["forward_s"], "forward_s": fwd["seconds"],
            "service_read_s": delta.get((service, "cdissect_stage_duration_seconds_sum", "read_shard"), 0.0),
            "service_compute_s": delta.get((service, "cdissect_stage_duration_seconds_sum", compute), 0.0),
            "service_write_s": delta.get((service, "cdissect_stage_duration_seconds_sum", "store_write"), 0.0),
            "run_wall_s": wall}
        print(f"[{r}] {stage}: path {path_ips:.2f} img/s, bare {bare['img_s']:.2f}, forward only {fwd['img_s']:.2f} "
              f"(path/forward {out[stage]['vs_forward']:.3f}, path/bare {out[stage]['vs_bare']:.3f})", flush=True)
    out["run1_wall_s"] = wall1
    shutil.rmtree(probe, ignore_errors=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None, help="probe images per repeat (default 128; quick 32)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default 32; quick 16)")
    parser.add_argument("--shard-size", type=int, default=None, help="images per shard (default 64; quick 16)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats, each on fresh images (default 3; quick 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    parser.add_argument("--target", default="resnet50", help="timed target model (default resnet50)")
    parser.add_argument("--other-target", default="resnet18", help="target of the reuse check's first run")
    parser.add_argument("--quick", action="store_true", help="32 images, one repeat: a fast smoke run")
    parser.add_argument("--shapes-clip", action="store_true",
                        help="time the shipped 64-pixel shapes-world CLIP instead of a random RN50 CLIP")
    parser.add_argument("--clip-arch", default="RN50", choices=sorted(CLIP_ARCHS),
                        help="architecture of the random-weight CLIP (default RN50)")
    parser.add_argument("--clip-precision", default="float32", choices=("float32", "float16"),
                        help="the CLIP's precision, as cdissect run --clip-precision (float16 needs CUDA)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    parser.add_argument("--child-loop", nargs=4, metavar=("KIND", "STAGE", "PROBE", "CLIP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_loop:
        import warnings
        warnings.filterwarnings("ignore")
        kind, stage, probe, clip_path = args.child_loop
        args.batch_size = args.batch_size or 32
        print(json.dumps(loop_figures(kind, stage, Path(probe), Path(clip_path), args)))
        return 0
    args.images = args.images or (32 if args.quick else 128)
    args.batch_size = args.batch_size or (16 if args.quick else 32)
    args.shard_size = args.shard_size or (16 if args.quick else 64)
    args.repeats = args.repeats or (1 if args.quick else 3)
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
    repeats: list[dict] = []
    try:
        (tmp / "concepts.txt").write_text("\n".join(WORDS) + "\n")
        clip_a, clip_b, clip_what = clip_checkpoints(tmp, args.shapes_clip, args.clip_arch)
        shards = args.images // args.shard_size + bool(args.images % args.shard_size)
        print(f"pipeline benchmark: {args.repeats} repeats of {args.images} images ({shards} shards of "
              f"{args.shard_size}), batch {args.batch_size}, device {device}, torch threads {torch.get_num_threads()} "
              f"(bench) / {args.threads or 'default'} (services), {os.cpu_count()} CPUs", flush=True)
        print(f"target {args.target} (random weights), CLIP: {clip_what}", flush=True)
        from cdissect_cli.concepts import load_concept_set
        concepts = list(load_concept_set(str(tmp / "concepts.txt")).words)
        bench.up()
        from cdissect.v1 import activations_pb2
        bench.stub("activations").ListLayers(  # loads the timed target in the service (untimed)
            activations_pb2.ListLayersRequest(model=args.target, weights="none"), timeout=600)
        for r in range(args.repeats):
            repeats.append(one_repeat(bench, args, r, clip_a, clip_b, concepts))
    finally:
        bench.down()
        shutil.rmtree(tmp, ignore_errors=True)

    summary: dict = {"images": args.images, "batch_size": args.batch_size, "shard_size": args.shard_size,
                     "repeats": args.repeats, "device": str(device), "cpus": os.cpu_count(), "target": args.target,
                     "clip": clip_what, "clip_precision": args.clip_precision}
    print()
    print(f"medians over {args.repeats} repeat(s) (each repeat: forward only, bare loop and path back to back):")
    print(f"{'stage':<12} {'path img/s':>10} {'fwd img/s':>10} {'bare img/s':>10} {'path/fwd':>9} {'path/bare':>9}")
    for stage in ("embedder", "activations"):
        rows = [rep[stage] for rep in repeats]
        fig = {key: median([row[key] for row in rows]) for key in rows[0]}
        summary[stage] = fig
        summary[f"{stage}_vs_forward"] = fig["vs_forward"]
        summary[f"{stage}_vs_bare"] = fig["vs_bare"]
        # The part of the path that is not the service's own forward passes (first batch's
        # decoding, RPCs, store, dispatch): immune to load differences between processes.
        summary[f"{stage}_service_forward_share"] = fig["service_compute_s"] / fig["path_s"]
        print(f"{stage:<12} {fig['path_img_s']:>10.2f} {fig['forward_img_s']:>10.2f} {fig['bare_img_s']:>10.2f} "
              f"{fig['vs_forward']:>9.3f} {fig['vs_bare']:>9.3f}   goals: path/fwd >= {GOAL_FORWARD}, "
              f"path/bare >= {GOAL_BARE}")
    shares = {stage: summary[f"{stage}_service_forward_share"] for stage in ("embedder", "activations")}
    print(f"share of the path spent in the service's forward passes (same process, same moment): embedder "
          f"{shares['embedder']:.3f}, activations {shares['activations']:.3f}")
    print()
    print("where the time goes (medians, seconds; service side from cdissect_stage_duration_seconds):")
    for stage in ("embedder", "activations"):
        fig = summary[stage]
        rest = fig["path_s"] - fig["service_read_s"] - fig["service_compute_s"] - fig["service_write_s"]
        print(f"  {stage}: path stage {fig['path_s']:.1f} = shard reads {fig['service_read_s']:.1f} + forward "
              f"{fig['service_compute_s']:.1f} + artifact writes {fig['service_write_s']:.1f} + rest (first batch's "
              f"decode, RPC, dispatch) {rest:.1f}; forward only {fig['forward_s']:.1f}; bare loop {fig['bare_s']:.1f} "
              f"(forward {fig['bare_forward_s']:.1f})")
    summary["reuse_ok"] = all(rep["reuse_ok"] for rep in repeats)
    summary["per_repeat"] = repeats
    first = repeats[0]["reuse"]
    print()
    print(f"reuse check, each repeat: run 2 ({args.target}) after run 1 ({args.other_target}), same probe set and "
          f"CLIP: "
          f"image-embedding shards computed {first['run2_computed']}, reused {first['run2_reused']}/{first['total']} "
          f"(run 1 computed {first['run1_computed']}); embedder images embedded during run 2: "
          f"{first['images_embedded']:.0f} (first repeat) → {'PASS' if summary['reuse_ok'] else 'FAIL'}")
    summary["wall_s"] = time.perf_counter() - t_start
    print(f"benchmark wall time {summary['wall_s']:.0f} s")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0 if summary["reuse_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
