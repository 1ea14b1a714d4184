"""Run the rendered manifests' pods as local processes, in the order a cluster would, and check
them the way the cluster would (see deploy/README.md, "Rehearsal").

Order: plan everything (every problem of the manifests is reported before anything starts) ->
the object store (SeaweedFS standing in for MinIO) -> the overlay's Deployments and Jobs at once
(the bucket Job runs while the services load) -> Jobs complete, probes pass -> the example CLI
Job (on the shapes world) -> its labels scored against the shapes truth -> Prometheus with the
shipped configuration reports every target up and every service's RPCs -> SIGTERM, clean exits.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deploy.rehearse.ledger import Ledger
from deploy.rehearse.manifests import ManifestProblem, Manifests
from deploy.rehearse.pods import ContainerPlan, Planner, PlanProblems, PodPlan
from deploy.rehearse.probes import Prober, ProbeFailure, wait_ready
from deploy.rehearse.processes import Process
from deploy.rehearse.prometheus import api, loopback_config, target_health
from deploy.rehearse.seaweedfs import SeaweedFS

EXAMPLE_JOBS = ("deploy/k8s/examples/cli-run-job.yaml",)
DEFAULT_IMAGES = 1200   # shapes-world probe images for the CLI Job: the demo's CI size
# `cdissect run` flags (with aliases) the shapes world substitutes, by cdissect_shapes.demo.DEMO key.
SHAPES_FLAGS = {"model": ("--model", "-m"), "weights": ("--weights",), "layers": ("--layers",),
                "probe_set": ("--probe-set", "--dataset"), "concept_set": ("--concept-set", "--concepts"),
                "clip_model": ("--clip-model",)}
ENV_NAME = re.compile(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b")


def duration_seconds(text: str) -> float:
    """A Prometheus duration (``15s``, ``1m``, ``1m30s``, ``500ms``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


class RehearsalFailure(Exception):
    """Something that would not work on a cluster; the message names where and why."""


@dataclass
class Options:
    """What to rehearse and how big."""

    root: Path
    overlay: str = "kind-cpu"
    example_jobs: tuple[str, ...] = EXAMPLE_JOBS
    images: int = DEFAULT_IMAGES
    work: Path | None = None
    keep: bool = False
    job_timeout: float = 1800.0
    min_final_top1: float = 0.9
    json_report: Path | None = None


@dataclass
class Running:
    """What has been started (so everything can be stopped)."""

    stores: list[SeaweedFS] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    probers: list[Prober] = field(default_factory=list)
    jobs: list[Process] = field(default_factory=list)


class Rehearsal:
    """One rehearsal; ``run()`` returns the exit code (0 passed, 1 failed)."""

    def __init__(self, options: Options, out: Any = print) -> None:
        self.o = options
        self.out = out
        self.ledger = Ledger()
        self.t0 = time.monotonic()
        self.running = Running()
        self.result: dict[str, Any] = {"passed": False}
        self.work = Path(options.work) if options.work else Path(tempfile.mkdtemp(prefix="cdissect-rehearse-"))

    def say(self, text: str) -> None:
        """A timestamped progress line."""
        self.out(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    # ------------------------------------------------------------------ top level
    def run(self) -> int:
        self.out(f"cdissect rehearsal: deploy/k8s/overlays/{self.o.overlay} + {', '.join(self.o.example_jobs)} "
                 f"as local processes (work folder {self.work})")
        try:
            pods = self._plan()
            self._start_and_check(pods)
            self.result["passed"] = True
        except (ManifestProblem, PlanProblems, RehearsalFailure, ProbeFailure) as failure:
            self.result["failure"] = str(failure)
            self.out("")
            self.out(f"REHEARSAL FAILED:\n{failure}")
        finally:
            self._stop_all()
            self.out("")
            for line in self.ledger.lines():
                self.out(line)
            self.result.update(self.ledger.as_dict(), seconds=round(time.monotonic() - self.t0, 1),
                               work=str(self.work))
            if self.o.json_report:
                Path(self.o.json_report).write_text(json.dumps(self.result, indent=1) + "\n")
            if self.result["passed"]:
                self.out(f"\nREHEARSAL PASSED in {time.monotonic() - self.t0:.0f} s")
                if not self.o.keep and not self.o.work:
                    shutil.rmtree(self.work, ignore_errors=True)
            else:
                self.out(f"\nREHEARSAL FAILED (logs and folders kept in {self.work})")
        return 0 if self.result["passed"] else 1

    # ------------------------------------------------------------------ static part
    def _plan(self) -> list[PodPlan]:
        manifests = Manifests(self.o.root, self.o.overlay, self.o.example_jobs)
        self.planner = Planner(manifests, self.work, self.ledger, self.o.example_jobs)
        pods = self.planner.plan()
        self.manifests = manifests
        for secret in manifests.find("Secret"):
            how = secret.get("rehearsal", {}).get("values", {})
            self.out(f"Secret {secret['metadata']['name']} written as {manifests.secrets_script} writes it: "
                     + ", ".join(f"{k} = {v}" for k, v in how.items()))
        for pod in pods:
            for container in pod.containers:
                if container.stand_in == "prometheus":
                    self._prometheus_config(container)
                if pod.source in self.o.example_jobs:
                    self._shapes_world(container)
        self.out("processes:")
        for pod in pods:
            for c in pod.containers:
                self.out(f"  {c.label} [{pod.source if pod.source != 'overlay' else 'overlay ' + self.o.overlay}]: "
                         f"{c.command_from}: {' '.join(c.argv)}")
        self.result["processes"] = {c.label: {"argv": c.argv, "command_from": c.command_from}
                                    for pod in pods for c in pod.containers}
        return pods

    def _prometheus_config(self, container: ContainerPlan) -> None:
        """The shipped scrape configuration with its DNS service discovery replaced by the loopback
        address of every pod behind each Service (what the A records would hold)."""
        flag = next((a for a in container.argv if a.startswith("--config.file=")), None)
        if flag is None:
            raise ManifestProblem(container.where, "Prometheus runs without --config.file")
        path = Path(flag.split("=", 1)[1])
        config = yaml.safe_load(path.read_text())
        own = container.pod
        maps = [self.manifests.get("ConfigMap", v["configMap"]["name"]) for v in own.spec.get("volumes", [])
                if "configMap" in v]
        source = next((self.manifests.where(m, ["data", path.name]) for m in maps
                       if m is not None and path.name in m.get("data", {})), f"{path.name} of {own.resource}")

        def targets(job: str, kind: str, entry: Any) -> list[str]:
            where = f"{source} scrape job {job}"
            if kind == "static":
                host, _, port = str(entry).rpartition(":")
                if host in ("localhost", "127.0.0.1") and int(port) in own.ports:
                    return [f"127.0.0.1:{own.ports[int(port)]}"]
                raise ManifestProblem(where, f"static target {entry} is not this pod's own port")
            found = []
            for name in entry.get("names", []):
                service = self.manifests.get("Service", name.split(".")[0])
                if service is None:
                    raise ManifestProblem(where, f"dns_sd name {name!r} is no Service of the manifests")
                for pod in self.planner.selected_pods(service):
                    if int(entry["port"]) not in pod.ports:
                        raise ManifestProblem(where, f"port {entry['port']}: {pod.resource} (behind Service {name}) "
                                                     f"declares no such containerPort")
                    found.append(f"127.0.0.1:{pod.ports[int(entry['port'])]}")
            return found

        try:
            rewritten = loopback_config(config, targets)
        except ValueError as err:
            raise ManifestProblem(source, str(err)) from None
        path.write_text(yaml.safe_dump(rewritten, sort_keys=False))
        self.ledger.substitute(f"{own.resource}: the mounted prometheus.yml's dns_sd_configs (A records of the "
                               f"headless Services) -> static loopback targets of the processes behind them; "
                               f"jobs, metrics paths and intervals as shipped")
        self.prometheus = (container, {j["job_name"]: j for j in rewritten["scrape_configs"]})

    def _shapes_world(self, container: ContainerPlan) -> None:
        """`cdissect run` of an example Job: its model, probe set and concepts need downloads; the
        shapes world (installed with cdissect-shapes) stands in, with the demo's settings."""
        argv = container.argv
        if Path(argv[0]).name != "cdissect" or len(argv) < 2 or argv[1] != "run":
            return
        from cdissect_shapes.demo import DEMO
        from cdissect_shapes.generator import write_probe_folder

        seed = int(DEMO["seed"])
        folder = self.work / "shapes-world" / f"shapes-{self.o.images}-seed{seed}"
        if not (folder / "attributes.csv").is_file():
            write_probe_folder(folder, self.o.images, seed)
        values = {"model": DEMO["model"], "weights": DEMO.get("weights", ""), "layers": ",".join(DEMO["layers"]),
                  "probe_set": str(folder), "concept_set": DEMO["concept_set"], "clip_model": DEMO["clip_model"]}
        for key, value in values.items():
            flags = SHAPES_FLAGS[key]
            index = next((i for i, a in enumerate(argv) if a in flags or a.split("=", 1)[0] in flags), None)
            old = None
            if index is not None:
                if "=" in argv[index]:
                    old = argv[index].split("=", 1)[1]
                    del argv[index]
                else:
                    old = argv[index + 1] if index + 1 < len(argv) else ""
                    del argv[index:index + 2]
            if not value:
                continue
            argv += [flags[0], value]
            self.ledger.substitute(f"{container.label} `cdissect run` {flags[0]}: {old or '(default)'} -> {value} "
                                   f"(shapes world, cdissect_shapes.demo.DEMO; {self.o.images} generated images)")
        self.cli_settings = DEMO

    # ------------------------------------------------------------------ running
    def _start_and_check(self, pods: list[PodPlan]) -> None:
        overlay = [p for p in pods if p.source == "overlay"]
        examples = [p for p in pods if p.source != "overlay"]
        for pod in overlay:
            for c in pod.containers:
                if c.stand_in == "seaweedfs":
                    self._start_seaweedfs(c)
        jobs, services = [], []
        for pod in overlay:
            for c in pod.containers:
                if c.stand_in == "seaweedfs":
                    continue
                process = Process(c, self.work / "logs").start()
                self.running.processes.append(process)
                if pod.kind == "Job":
                    jobs.append(process)
                else:
                    services.append(process)
                    self.running.probers.append(Prober(process, self.say).start())
        self.say(f"started {', '.join(p.label for p in jobs + services)}")
        pending = list(jobs)

        def watch() -> None:
            for job in list(pending):
                if job.poll() is not None:
                    self._job_done(job)
                    pending.remove(job)
            for process in services:
                if process.poll() is not None:
                    raise RehearsalFailure(self._exited(process, "a Deployment's container must keep running; "
                                                                 "Kubernetes would restart it"))

        try:
            budget = max([self._probe_budget(p) for p in services] + [60.0])
            wait_ready(self.running.probers, budget, watch)
        except ProbeFailure as failure:
            exited = [p for p in self.running.probers if p.exited]
            raise RehearsalFailure(self._exited(exited[0].process, str(failure)) if exited else str(failure)) from None
        deadline = time.monotonic() + self.o.job_timeout
        while pending:
            watch()
            if time.monotonic() > deadline:
                raise RehearsalFailure(f"{pending[0].label} did not finish in {self.o.job_timeout:.0f} s")
            time.sleep(0.5)
        self.say("every Job completed, every Deployment ready")
        for pod in examples:
            for c in pod.containers:
                self._run_example_job(c)
        self._check_prometheus()
        self._check_auth()
        self._check_probes_still_pass()
        self._stop_services_cleanly()

    def _probe_budget(self, process: Process) -> float:
        """How long the kubelet would wait for startup plus readiness."""
        total = 0.0
        for probe in process.plan.probes:
            if probe.kind in ("startupProbe", "readinessProbe"):
                total += probe.initial_delay + probe.period * probe.failure_threshold + probe.timeout
        return total + 30.0

    def _start_seaweedfs(self, container: ContainerPlan) -> None:
        """SeaweedFS on MinIO's --address port, with MinIO's root credentials and data folder."""
        argv, env = container.argv, container.env
        address = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--address"), None)
        if address is None or not address.rsplit(":", 1)[-1].isdigit():
            raise RehearsalFailure(f"{container.where}: MinIO's args give no --address :PORT for the stand-in")
        missing = [k for k in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD") if not env.get(k)]
        if missing:
            raise RehearsalFailure(f"{container.where}.env: {', '.join(missing)} not set; "
                                   f"MinIO would start with its default credentials")
        data = next((a for a in argv[2:] if a.startswith("/") and not a.startswith(str(container.pod.dir))), None)
        data_dir = Path(data) if data else container.pod.dir / "data"
        server = SeaweedFS(data_dir / ".seaweedfs", access_key=env["MINIO_ROOT_USER"],
                           secret_key=env["MINIO_ROOT_PASSWORD"], bucket=None,
                           ports={"s3": int(address.rsplit(":", 1)[-1])})
        self.running.stores.append(server)
        try:
            server.start()
        except (OSError, RuntimeError) as err:   # weed missing, exited, or not answering
            raise RehearsalFailure(f"{container.where}: the stand-in SeaweedFS did not start: {err}") from None
        for probe in container.probes:
            self.ledger.not_honoured(f"MinIO's {probe.handler} {probe.kind} {probe.path} (the stand-in is not MinIO; "
                                     f"it was ready when an S3 ListBuckets with the Secret's keys answered)",
                                     probe.where)
        self.say(f"{container.label}: SeaweedFS S3 API ready on {server.endpoint}")

    def _job_done(self, job: Process) -> None:
        code = job.poll()
        if code != 0:
            raise RehearsalFailure(self._exited(job, "a Job must exit 0"))
        self.say(f"{job.label} completed: {job.log_tail(1)}")

    def _exited(self, process: Process, why: str) -> str:
        """Failure text for a process that stopped: exit code, log tail, and for every variable the
        log names, the value it got and the field that set it (or where it would be set)."""
        plan = process.plan
        tail = process.log_tail(15)
        lines = [f"{plan.where}: {plan.label} exited with code {process.poll()} ({why}).",
                 f"command ({plan.command_from}): {' '.join(plan.argv)}", "its output ends with:",
                 *[f"  | {line}" for line in tail.splitlines()]]
        for name in sorted(set(ENV_NAME.findall(tail))):
            if name in plan.env:
                lines.append(f"{name} = {plan.env[name]!r}, set by {plan.env_origins.get(name, '?')}")
            elif name.startswith("CDISSECT_") or any(name in c.env for p in self.planner.pods for c in p.containers):
                lines.append(f"{name} is not set for {plan.label}: it is in none of {plan.env_lookup}")
        return "\n".join(lines)

    def _run_example_job(self, container: ContainerPlan) -> None:
        job = Process(container, self.work / "logs").start()
        self.running.jobs.append(job)
        self.say(f"started {job.label}: {' '.join(container.argv)}")
        deadline = time.monotonic() + self.o.job_timeout
        while job.poll() is None:
            for prober in self.running.probers:
                if prober.failure:
                    raise RehearsalFailure(prober.failure)
            if time.monotonic() > deadline:
                raise RehearsalFailure(f"{job.label} did not finish in {self.o.job_timeout:.0f} s")
            time.sleep(0.5)
        if job.poll() != 0:
            raise RehearsalFailure(self._exited(job, "a Job must exit 0"))
        self.say(f"{job.label} completed in {time.monotonic() - job.started:.0f} s")
        if getattr(self, "cli_settings", None) is not None:
            self._score(container)

    def _score(self, container: ContainerPlan) -> None:
        """The Job's run folder scored against the shapes truth with the demo's scoring."""
        from cdissect_cli.demo_command import score_run_folder
        from cdissect_common.config import ENV_VARS, load_settings
        from cdissect_common.store import open_store
        from cdissect_shapes.scores import score_run

        settings = load_settings(None, env=container.env, config_file=os.devnull)
        runs = container.cwd / settings.runs_dir          # an absolute runs_dir stays as it is
        folders = sorted((p for p in runs.glob("*/results.json")), key=lambda p: p.stat().st_mtime)
        if not folders:
            raise RehearsalFailure(f"{container.label} wrote no run folder under {runs} ({ENV_VARS['runs_dir']})")
        store = open_store(settings.store, settings)
        try:
            scores = score_run_folder(folders[-1].parent, store, self.cli_settings, score_run)
        finally:
            getattr(store, "close", lambda: None)()
        keys = ("final_top1", "final_top3", "planted_top1", "conv_selective_top1", "conv_top1")
        self.say("labels against the shapes truth: " + ", ".join(f"{k} {scores[k]:.3f}" for k in keys))
        self.result["scores"] = {k: scores[k] for k in (*keys, "n_final", "n_planted", "n_conv")}
        self.result["run_dir"] = str(folders[-1].parent)
        if not scores["final_top1"] >= self.o.min_final_top1:
            raise RehearsalFailure(f"{container.label}: final-layer top-1 {scores['final_top1']:.3f} is below "
                                   f"{self.o.min_final_top1} (the demo's goal): the services computed wrong labels")

    def _check_prometheus(self) -> None:
        """Every target of the shipped configuration up, and every cdissect job's RPCs in Prometheus."""
        if not hasattr(self, "prometheus"):
            self.ledger.not_honoured("Prometheus scraping", "no Prometheus Deployment in the manifests")
            return
        from cdissect_common.metrics import STAGE_DURATION

        container, jobs = self.prometheus
        web = next(a for a in container.argv if a.startswith("--web.listen-address="))
        base = f"http://127.0.0.1:{web.rsplit(':', 1)[-1]}"
        config_file = Path(next(a for a in container.argv if a.startswith("--config.file=")).split("=", 1)[1])
        interval = duration_seconds(str(yaml.safe_load(config_file.read_text())["global"]["scrape_interval"]))
        deadline = time.monotonic() + 2 * interval + 15
        query = f'sum by (job) ({STAGE_DURATION}_count{{stage=~"rpc_.+", stage!="rpc_Check"}})'
        while True:
            health = target_health(base)
            rpcs = {r["metric"]["job"]: float(r["value"][1]) for r in api(base, "/api/v1/query", query=query)["result"]}
            service_jobs = [j for j in jobs if j.startswith("cdissect-")]
            up = {j: [t for t in health if t["job"] == j] for j in jobs}
            done = (all(targets and all(t["health"] == "up" for t in targets) for targets in up.values())
                    and all(rpcs.get(j, 0) > 0 for j in service_jobs))
            if done or time.monotonic() > deadline:
                break
            time.sleep(1)
        self.result["prometheus"] = {"targets": health, "rpcs": rpcs}
        for job, targets in up.items():
            for t in targets:
                self.say(f"Prometheus target {job} {t['instance']}: {t['health']}"
                         + (f" ({t['error']})" if t["error"] else ""))
        bad = [f"{j}: {', '.join(t['health'] + ' ' + t['error'] for t in ts) or 'no target'}" for j, ts in up.items()
               if not ts or any(t["health"] != "up" for t in ts)]
        if bad:
            raise RehearsalFailure(f"deploy/k8s/base/prometheus/prometheus.yml: targets not up after "
                                   f"{2 * interval + 15:.0f} s: {'; '.join(bad)}")
        idle = [j for j in service_jobs if rpcs.get(j, 0) <= 0]
        if idle:
            raise RehearsalFailure(f"Prometheus shows no RPCs of the CLI Job for {', '.join(idle)}: the Job did not "
                                   f"use those services (is its CDISSECT_<SERVICE> address set?)")
        self.say("Prometheus: every target up; RPCs per job: "
                 + ", ".join(f"{j} {v:.0f}" for j, v in sorted(rpcs.items())))

    def _check_auth(self) -> None:
        """Every gRPC service refuses a call without the bearer token (so the Secret's token is in force,
        and the CLI Job passed because it sent it)."""
        import grpc

        for prober in self.running.probers:
            probe = next((p for p in prober.probes.values() if p.handler == "grpc" and p.service), None)
            if probe is None:
                continue
            with grpc.insecure_channel(f"127.0.0.1:{probe.local_port}") as channel:
                try:
                    channel.unary_unary(f"/{probe.service}/RehearsalAuthCheck")(b"", timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
            if code != grpc.StatusCode.UNAUTHENTICATED:
                raise RehearsalFailure(f"{prober.process.plan.where}: a call without the bearer token got {code.name}, "
                                       f"not UNAUTHENTICATED: the service runs without the token of Secret "
                                       f"cdissect-auth (CDISSECT_AUTH_TOKEN_FILE and the auth volume)")
        self.say("auth: every gRPC service refuses a call without the Secret's bearer token (UNAUTHENTICATED)")

    def _check_probes_still_pass(self) -> None:
        for prober in self.running.probers:
            if prober.failure:
                raise RehearsalFailure(prober.failure)
        self.result["probes"] = {p.process.label: p.counts for p in self.running.probers}
        self.say("probes during the run: " + "; ".join(
            f"{p.process.label} " + ", ".join(f"{k} {v[0]} passed/{v[1]} failed" for k, v in p.counts.items())
            for p in self.running.probers))

    def _stop_services_cleanly(self) -> None:
        """SIGTERM as the kubelet sends it; each must exit 0 within terminationGracePeriodSeconds."""
        for prober in self.running.probers:
            prober.stop()
        codes = {}
        for process in self.running.processes:
            if process.poll() is None:
                codes[process.label] = process.terminate(process.plan.pod.grace)
        self.say("stopped with SIGTERM: " + ", ".join(f"{k} exit {v}" for k, v in codes.items()))
        bad = {k: v for k, v in codes.items() if v != 0}
        if bad:
            raise RehearsalFailure(f"not a clean stop within terminationGracePeriodSeconds: {bad} (None = killed)")

    def _stop_all(self) -> None:
        for prober in self.running.probers:
            prober.stop()
        for process in self.running.jobs + self.running.processes:
            process.kill()
        for store in self.running.stores:
            store.stop()

