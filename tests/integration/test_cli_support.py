"""Helpers of the CLI integration tests (imported by the test_cli_* modules; holds no tests).

Every CLI invocation runs `cdissect_cli.app.main` in a fresh Python process through a wrapper
that, whatever happens, records which torch modules that process imported: each call asserts
there are none (the CLI must never import torch; the services it starts may).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WRAPPER = r"""
import json, os, sys
code = 0
try:
    from cdissect_cli.app import main
    main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
finally:
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    with open(os.environ["CDISSECT_TEST_IMPORTS"], "w") as fh:
        json.dump(leaked, fh)
sys.exit(code)
"""
WORDS = ["red", "green", "blue", "circle", "square", "dark", "bright", "round", "box", "dot", "sky", "grass"]


def cli_command(args: list[str]) -> list[str]:
    """argv of one wrapped CLI invocation."""
    return [sys.executable, "-c", WRAPPER, *[str(a) for a in args]]


def assert_no_torch(env: dict[str, str]) -> None:
    """The last wrapped CLI process imported no torch module."""
    leaked = json.loads(Path(env["CDISSECT_TEST_IMPORTS"]).read_text())
    assert leaked == [], f"the CLI process imported torch modules: {leaked[:5]}"


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300, expect: int | None = 0
            ) -> subprocess.CompletedProcess:
    """Run the CLI to completion; check its exit code (unless expect is None) and that torch stayed out."""
    proc = subprocess.run(cli_command(args), env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=env.get("CDISSECT_TEST_CWD", str(REPO)))
    assert_no_torch(env)
    if expect is not None:
        assert proc.returncode == expect, (f"cdissect {' '.join(map(str, args))} exited {proc.returncode}\n"
                                           f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start the CLI in the background (stdout/stderr to pipes)."""
    return subprocess.Popen(cli_command(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=env.get("CDISSECT_TEST_CWD", str(REPO)))


def make_env(tmp: Path, **extra: str) -> dict[str, str]:
    """An isolated environment: own HOME/cache/store/runs folder, no inherited CDISSECT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDISSECT_")}
    for name in ("home", "cache", "runs", "store"):
        (tmp / name).mkdir(parents=True, exist_ok=True)
    env.update({
        "HOME": str(tmp / "home"), "XDG_CACHE_HOME": str(tmp / "cache"),
        "CDISSECT_RUNS_DIR": str(tmp / "runs"), "CDISSECT_STORE": f"file://{tmp / 'store'}",
        "CDISSECT_CACHE_DIR": str(tmp / "cache" / "weights"), "CDISSECT_DEVICE": "cpu",
        "CDISSECT_TEST_IMPORTS": str(tmp / "cli-imports.json"), "CDISSECT_TEST_CWD": str(tmp),
        "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def services_up(tmp: Path) -> Iterator[dict[str, str]]:
    """The body of a module fixture: an isolated environment (make_env) with services started by
    `cdissect up`, yielded, then stopped by `cdissect down`."""
    env = make_env(tmp)
    run_cli(["up"], env, timeout=240)
    yield env
    run_cli(["down"], env)


def _conftest(relative: str, alias: str):
    """A conftest module of the test tree, imported by path under a unique name.

    Both tests/conftest.py and tests/integration/conftest.py are named `conftest`, so a plain
    `import conftest` would get whichever came first.
    """
    import importlib.util

    if alias not in sys.modules:
        spec = importlib.util.spec_from_file_location(alias, REPO / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[alias] = module
        spec.loader.exec_module(module)
    return sys.modules[alias]


def root_conftest():
    """tests/conftest.py (probe image generator, CLIP checkpoint writer, free_port)."""
    return _conftest("tests/conftest.py", "cdissect_tests_root_conftest")


def integration_conftest():
    """tests/integration/conftest.py (launch_service, ServiceHandle, SeaweedFS)."""
    return _conftest("tests/integration/conftest.py", "cdissect_tests_integration_conftest")


def write_probe(folder: Path, n: int, seed: int = 0) -> Path:
    """A probe folder of n generated PNGs in class subfolders (the root conftest's generator)."""
    for fname, data, cls in root_conftest().make_probe_images(n, seed=seed):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        (folder / cls / fname).write_bytes(data)
    return folder


def write_words(path: Path, words: list[str] = WORDS) -> Path:
    """A small concept file, one concept per line."""
    path.write_text("\n".join(words) + "\n")
    return path


def run_args(probe: Path, words: Path, clip: Path, *extra: str, layers: str = "layer3,layer4",
             shard_size: int = 8) -> list[str]:
    """`cdissect run` on resnet18 with random weights, the tiny CLIP, a probe folder and a word file.

    soft_wpmi's top_k is lowered to 5: the reference's 100 needs at least 100 probe images.
    """
    return ["run", "--model", "resnet18", "--weights", "none", "--layers", layers, "--probe-set", str(probe),
            "--concept-set", str(words), "--clip-model", str(clip), "--shard-size", str(shard_size),
            "--param", "top_k=5", "--no-progress", *extra]


def run_dir_of(proc: subprocess.CompletedProcess) -> Path:
    """The run folder a successful `cdissect run` printed."""
    for line in proc.stdout.splitlines():
        if line.startswith("run folder: "):
            return Path(line[len("run folder: "):].strip())
    raise AssertionError(f"no run folder printed:\n{proc.stdout}\n{proc.stderr[-3000:]}")


def results(run_dir: Path) -> dict:
    """results.json of a run folder."""
    return json.loads((run_dir / "results.json").read_text())


def labels_by_unit(run_dir: Path, layer: str | None = None) -> dict[tuple[str, int], tuple]:
    """(layer, unit) → (label, similarity, top images) from results.json (one layer or all)."""
    out = {}
    for entry in results(run_dir)["layers"]:
        if layer is None or entry["name"] == layer:
            for unit in entry["units"]:
                out[(entry["name"], unit["unit"])] = (unit["label"], unit["similarity"], tuple(unit["top_images"]))
    return out


def assert_same_labels(run_dir: Path, reference_dir: Path, layer: str | None = None) -> None:
    """Same units, same labels and top images, similarities equal up to float noise (1e-4).

    Services in different processes may use different thread counts, which changes float
    summation order in the last bits; labels and image rankings must not change.
    """
    got, want = labels_by_unit(run_dir, layer), labels_by_unit(reference_dir, layer)
    assert got.keys() == want.keys() and got
    for key, (label, sim, top) in got.items():
        ref_label, ref_sim, ref_top = want[key]
        assert (label, top) == (ref_label, ref_top), (key, got[key], want[key])
        assert abs(sim - ref_sim) <= 1e-4 * max(1.0, abs(ref_sim)), (key, sim, ref_sim)


def child_pids(parent: int) -> list[tuple[int, str]]:
    """(pid, command line) of the direct children of a process, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out.append((int(entry.name), cmd))
        except (OSError, ValueError, IndexError):
            continue
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll until predicate() is truthy; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM a process started by a test, SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

