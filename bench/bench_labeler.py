"""Benchmark: streaming soft-WPMI (StreamingLabeler) against a dense reference-style loop.

Run by ``make bench-labeler`` (not a test). Synthetic CLIP-like data: N images, C concepts,
d = 512, K neurons (default the issue's 20000 × 20000 × 2048). Each implementation runs in a
fresh subprocess so that its peak resident memory (``ru_maxrss``) is its own:

- dense: as the authors' code — P = normalize(I)·normalize(T)ᵀ dense float32 [N, C], Q =
  softmax(a·P) dense, top-k images per neuron, then a Python loop over neurons gathering [top_k, C]
  rows of Q and summing logs, the prior over all neurons, argmax;
- streaming: ``StreamingLabeler('soft_wpmi')`` fed shards of 1000 images (activations arrive per
  shard, as from the activations service), then ``finish()`` (top-5 concepts, top-10 images,
  dead units, the held-out correlation/AUPRC of every label; the AUC/p label quality is timed apart);
- simulation: the same with ``select='simulation'`` (soft-WPMI on the 80% selection split, its
  top-25 re-ranked by correlation there, scores on the held-out 20%), timed the same way.

Prints both wall times (labeling only, data generation excluded), both peak memories, the import
baseline (Python + torch, paid by both), the ratios, and whether the top-1 labels are identical.
``--quick`` runs a small size. The full size needs ~6 GB of RAM for the dense run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FULL = dict(n=20000, c=20000, d=512, k=2048)
QUICK = dict(n=4000, c=4000, d=512, k=512)
SHARD = 1000


def _cpu_s() -> float:
    """User + system CPU seconds of this process so far (all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_mb() -> float:
    """Peak resident set of this process in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_embeddings(n: int, c: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CLIP-like image and text embeddings (a shared direction gives positive cosines ~0.2-0.3,
    as CLIP's) plus the projection that turns image embeddings into activations."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(d).astype(np.float32)
    images = (0.35 * common + rng.standard_normal((n, d), dtype=np.float32)).astype(np.float32)
    texts = (0.35 * common + rng.standard_normal((c, d), dtype=np.float32)).astype(np.float32)
    return images, texts, common


def activations_for(images: np.ndarray, k: int, shard_index: int, seed: int = 0) -> np.ndarray:
    """Activations [n, k] of one shard: ReLU of a fixed projection of the image plus noise."""
    rng = np.random.default_rng(seed + 1)
    proj = rng.standard_normal((images.shape[1], k), dtype=np.float32) / np.sqrt(images.shape[1])
    noise = np.random.default_rng([seed, 2, shard_index]).standard_normal((images.shape[0], k), dtype=np.float32)
    return np.maximum(images @ proj + 0.5 * noise + 0.5, 0.0).astype(np.float32)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def run_dense(n: int, c: int, d: int, k: int, out: Path, compare: Path | None = None, device: str = "cpu") -> dict:
    import torch

    images, texts, _ = make_embeddings(n, c, d)
    A = np.concatenate([activations_for(images[s:s + SHARD], k, s // SHARD) for s in range(0, n, SHARD)])
    I, T, At = (torch.from_numpy(x).to(device) for x in (images, texts, A))
    top_k, a, lam, min_prob, p_start, p_end = 100, 10, 1, 1e-7, 0.998, 0.97
    _sync(device)
    start, cpu0 = time.perf_counter(), _cpu_s()
    with torch.no_grad():
        P = (I / I.norm(dim=1, keepdim=True)) @ (T / T.norm(dim=1, keepdim=True)).T
        Q = torch.softmax(a * P, dim=1)
        # Stable descending sort: ties go to the lower image index, the rule cdissect uses.
        inds = torch.sort(At, dim=0, descending=True, stable=True)[1][:top_k]
        p_in = (p_start - (torch.arange(top_k, device=device) / top_k * (p_start - p_end))).unsqueeze(1)
        # Rows go into a preallocated [K, C] array. The reference appends them to a list and
        # concatenates: with glibc that fragments the heap (20 GB peak measured at full size).
        L = torch.empty(k, c, device=device)
        for unit in range(k):
            q = Q.gather(0, inds[:, unit:unit + 1].expand(-1, c))
            L[unit] = torch.sum(torch.log(1 + p_in * (q - 1) + min_prob), dim=0)
        prior = torch.logsumexp(L, dim=0, keepdim=True) - np.log(k)
        S = L - lam * prior
        vals, ids = S.max(dim=1)
        _sync(device)
    elapsed, cpu = time.perf_counter() - start, _cpu_s() - cpu0
    ids, vals = ids.cpu(), vals.cpu()
    np.save(out, np.stack([ids.numpy().astype(np.float64), vals.numpy().astype(np.float64)]))
    result = {"seconds": elapsed, "cpu_seconds": cpu, "peak_mb": _peak_mb()}
    if compare is not None:
        result.update(_arbitrate(np.load(compare)[0].astype(np.int64), ids.numpy(), S.cpu(), Q.cpu(), inds.cpu(),
                                 p_in.cpu(), min_prob, lam))
    return result


def _arbitrate(stream_ids, dense_ids, S, Q, inds, p_in, min_prob: float, lam: float) -> dict:
    """Where the two top-1 labels differ, recompute both candidates' scores in float64 (all
    neurons, for the exact prior) and count which implementation picked the larger one."""
    import torch

    differ = np.flatnonzero(stream_ids != dense_ids)
    if differ.size == 0:
        return {"mismatches": 0}
    concepts = sorted(set(stream_ids[differ].tolist()) | set(dense_ids[differ].tolist()))
    p64 = p_in.double()
    S64 = {}
    for m in concepts:
        q = Q[:, m].double()[inds]                                         # [top_k, K]
        Lm = torch.log(1 + p64 * (q - 1) + min_prob).sum(dim=0)
        S64[m] = Lm - lam * (torch.logsumexp(Lm, dim=0) - np.log(Lm.shape[0]))
    right = sum(int(S64[stream_ids[u]][u] >= S64[dense_ids[u]][u]) for u in differ)
    gap32 = max(abs(float(S[u, stream_ids[u]] - S[u, dense_ids[u]])) for u in differ)
    gap64 = max(abs(float(S64[stream_ids[u]][u] - S64[dense_ids[u]][u])) for u in differ)
    return {"mismatches": int(differ.size), "streaming_right_float64": right,
            "max_gap_dense_float32": gap32, "max_gap_float64": gap64}


def run_streaming(n: int, c: int, d: int, k: int, out: Path, select: str = "similarity",
                  device: str = "cpu") -> dict:
    from cdissect_labeler.streaming import StreamingLabeler

    images, texts, _ = make_embeddings(n, c, d)
    if device.startswith("cuda"):  # CUDA's start-up (context, kernels) before the clock, as a service's warm-up
        warm = StreamingLabeler("soft_wpmi", {"top_k": 2}, texts[:8], device=device, num_images=4)
        warm.add_shard(images[:4], np.ones((4, 2), np.float32))
        warm.finish(top_concepts=1, top_images=1)
    elapsed = cpu = 0.0
    start, cpu0 = time.perf_counter(), _cpu_s()
    labeler = StreamingLabeler("soft_wpmi", {}, texts, device=device, num_images=n, select=select)
    elapsed, cpu = elapsed + time.perf_counter() - start, cpu + _cpu_s() - cpu0
    for s in range(0, n, SHARD):
        acts = activations_for(images[s:s + SHARD], k, s // SHARD)     # arrives from the service
        start, cpu0 = time.perf_counter(), _cpu_s()
        labeler.add_shard(images[s:s + SHARD], acts)
        elapsed, cpu = elapsed + time.perf_counter() - start, cpu + _cpu_s() - cpu0
    start, cpu0 = time.perf_counter(), _cpu_s()
    labels = labeler.finish(top_concepts=5, top_images=10, quality=False)
    elapsed, cpu = elapsed + time.perf_counter() - start, cpu + _cpu_s() - cpu0
    start, cpu0 = time.perf_counter(), _cpu_s()
    with_quality = labeler.finish(top_concepts=5, top_images=10, quality=True)
    quality_s, quality_cpu = time.perf_counter() - start, _cpu_s() - cpu0
    assert np.array_equal(with_quality.concept_ids, labels.concept_ids)
    np.save(out, np.stack([labels.concept_ids[:, 0].astype(np.float64), labels.scores[:, 0].astype(np.float64)]))
    return {"seconds": elapsed, "cpu_seconds": cpu, "peak_mb": _peak_mb(), "finish_with_quality_s": quality_s,
            "finish_with_quality_cpu_s": quality_cpu, "dead": int(with_quality.dead.sum()),
            "median_auc": float(np.median(with_quality.quality_auc)),
            "median_correlation": float(np.median(with_quality.correlation)),
            "heldout_images": labeler.heldout_images}


def run_simulation(n: int, c: int, d: int, k: int, out: Path, device: str = "cpu") -> dict:
    return run_streaming(n, c, d, k, out, select="simulation", device=device)


def run_baseline(n: int, c: int, d: int, k: int, out: Path, device: str = "cpu") -> dict:
    """Only the imports and the embeddings both runs start from: the floor of both peaks."""
    import torch  # noqa: F401

    import cdissect_labeler.streaming  # noqa: F401
    make_embeddings(n, c, d)
    return {"seconds": 0.0, "cpu_seconds": 0.0, "peak_mb": _peak_mb()}


def _child(mode: str, size: dict, out: Path, threads: int, compare: Path | None = None, device: str = "cpu") -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--out", str(out), f"--threads={threads}", f"--device={device}",
           *([f"--compare={compare}"] if compare else []),
           *[f"--{key}={value}" for key, value in size.items()]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small size {QUICK}")
    parser.add_argument("--child", choices=["dense", "streaming", "simulation", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compare", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in both runs (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda: where both implementations run (default cpu)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    for key in FULL:
        parser.add_argument(f"--{key}", type=int, default=None)
    args = parser.parse_args()
    size = dict(QUICK if args.quick else FULL)
    size.update({key: getattr(args, key) for key in FULL if getattr(args, key) is not None})
    if args.child:
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        fn = {"dense": run_dense, "streaming": run_streaming, "simulation": run_simulation,
              "baseline": run_baseline}[args.child]
        extra = {"compare": args.compare} if args.child == "dense" else {}
        print(json.dumps(fn(size["n"], size["c"], size["d"], size["k"], args.out, device=args.device, **extra)))
        return
    print(f"bench-labeler: soft_wpmi, N={size['n']} images, C={size['c']} concepts, d={size['d']}, "
          f"K={size['k']} neurons, shards of {SHARD}, device {args.device}, {os.cpu_count()} CPU cores, "
          f"torch threads {args.threads or 'default'}, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        res = {mode: _child(mode, size, Path(tmp) / f"{mode}.npy", args.threads, device=args.device)
               for mode in ("baseline", "streaming", "simulation")}
        res["dense"] = _child("dense", size, Path(tmp) / "dense.npy", args.threads, Path(tmp) / "streaming.npy",
                              device=args.device)
        dense = np.load(Path(tmp) / "dense.npy")
        stream = np.load(Path(tmp) / "streaming.npy")
    base = res["baseline"]["peak_mb"]
    same = np.array_equal(dense[0], stream[0])
    print(f"  import + embeddings baseline peak: {base:9.0f} MiB")
    for mode in ("dense", "streaming"):
        r = res[mode]
        print(f"  {mode:9s}: {r['seconds']:8.2f} s wall {r['cpu_seconds']:8.2f} s CPU   peak {r['peak_mb']:8.0f} MiB   "
              f"(above baseline {r['peak_mb'] - base:8.0f} MiB)")
    d, s = res["dense"], res["streaming"]
    print(f"  streaming finish() with label quality: {s['finish_with_quality_s']:.2f} s wall "
          f"{s['finish_with_quality_cpu_s']:.2f} s CPU (quality not in the figures above; the dense run has none)")
    print(f"  speed-up: {d['seconds'] / s['seconds']:.2f}x wall, {d['cpu_seconds'] / s['cpu_seconds']:.2f}x CPU   "
          f"peak memory ratio: {d['peak_mb'] / s['peak_mb']:.2f}x "
          f"(above baseline: {(d['peak_mb'] - base) / max(1.0, s['peak_mb'] - base):.2f}x)")
    m = res["simulation"]
    print(f"  --select simulation: {m['seconds']:8.2f} s wall {m['cpu_seconds']:8.2f} s CPU   peak {m['peak_mb']:8.0f} MiB "
          f"({m['seconds'] / s['seconds']:.2f}x wall, {m['cpu_seconds'] / s['cpu_seconds']:.2f}x CPU of the reference "
          f"selection; both include the held-out scores "
          f"on {s['heldout_images']} images); median held-out correlation of the labels: reference "
          f"{s['median_correlation']:.3f}, simulation {m['median_correlation']:.3f}")
    print(f"  top-1 labels identical: {same} ({int((dense[0] == stream[0]).sum())}/{len(dense[0])}); "
          f"max |Δ top-1 score| {np.abs(dense[1] - stream[1]).max():.2e}; "
          f"streaming: {s['dead']} dead units, median label AUC {s['median_auc']:.3f}")
    if not same:
        print(f"  the {d['mismatches']} differing labels are near-ties: top-2 gap in the dense float32 scores "
              f"≤ {d['max_gap_dense_float32']:.1e}, in float64 ≤ {d['max_gap_float64']:.1e}; "
              f"float64 sides with streaming in {d['streaming_right_float64']}/{d['mismatches']}")
    if args.json:
        print(json.dumps({"size": size, "device": args.device, "streaming_s": s["seconds"], "dense_s": d["seconds"],
                          "speedup": d["seconds"] / s["seconds"], "streaming_peak_mb": s["peak_mb"],
                          "dense_peak_mb": d["peak_mb"], "baseline_peak_mb": base, "labels_identical": bool(same),
                          "mismatches": int(d.get("mismatches", 0)), "simulation_s": m["seconds"]}, sort_keys=True))
    # Labels may differ only on near-ties the dense float32 sums cannot resolve.
    if not same and d["max_gap_float64"] > 1e-3:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
