"""The Helm chart (deploy/helm/peerserver), proven without a cluster.

No Kubernetes runs here. The chart is rendered and linted by Helm's own Go SDK
(helm-python-sdk embeds it: what `helm template` and `helm lint` do), with its
default values and each of its ci/*.yaml variants; every object is validated
against the schemas of two Kubernetes versions (kubernetes-validate, strict);
and what a cluster would do with the objects is checked against the real
parts: a real worker is started with the environment the chart gives it and
asked the probes' paths, the real nginx tests and serves the configuration the
chart renders, and the real coturn runs with the chart's arguments.
"""
import base64
import copy
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from signaling import conf, services, turn
from tests import client
from tests.servers import BASE, Certificates, Worker, free_port, free_udp_and_tcp_port, http_get, terminate, wait_until

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "peerserver"
NGINX = "/usr/sbin/nginx"

# Pinned in requirements-test.txt: the render and validation APIs used here.
assert helm.__version__ == "0.2.2", f"helm-python-sdk {helm.__version__} is installed; these tests are written for 0.2.2"
assert kubernetes_validate.__version__ == "1.37.0", (
    f"kubernetes-validate {kubernetes_validate.__version__} is installed; these tests are written for 1.37.0"
)

KUBERNETES_VERSIONS = ["1.29.0", "1.33.0"]
VARIANTS = ["default", *sorted(path.stem for path in (CHART / "ci").glob("*.yaml"))]
RELEASE, NAMESPACE = "demo", "peers"
# Passwords in the URLs a chart user may give as values (a ci/ file's own win):
# none of them may show up outside a Secret.
CANARIES = {
    "database": {"url": "postgres://peerserver:canary-db-password-81f2@postgresql:5432/peerserver"},
    "redis": {"url": "redis://:canary-redis-password-4c9a@redis-master:6379/0"},
}
SECRET_ENV = {"DJANGO_SECRET_KEY", "PEERJS_TURN_SECRET", "PEERJS_METRICS_TOKEN", "PEERJS_TOKEN_SECRET", "DATABASE_URL", "REDIS_URL"}
HOOKS = "pre-install,pre-upgrade"


def merged(base, extra):
    """``base`` with ``extra`` laid over it, mappings merged key by key (as Helm merges values files)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def variant_values(variant):
    if variant == "default":
        return {}
    return yaml.safe_load((CHART / "ci" / f"{variant}.yaml").read_text()) or {}


class Rendered:
    """The objects of one `helm template`, by kind and name."""

    def __init__(self, values):
        self.values = values
        with helm.Chart.load(CHART) as chart:
            self.files = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        self.objects = [
            doc
            for path, text in self.files.items() if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc
        ]

    def all(self, kind):
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind, name=None):
        found = [obj for obj in self.all(kind) if name is None or obj["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    @property
    def deployment(self):
        return self.one("Deployment")

    def container(self, name, kind="Deployment"):
        (found,) = [c for c in self.one(kind)["spec"]["template"]["spec"]["containers"] if c["name"] == name]
        return found

    def secret_data(self, name):
        """A rendered Secret's data, decoded."""
        return {key: base64.b64decode(value).decode() for key, value in self.one("Secret", name)["data"].items()}

    def env(self, container):
        """A container's environment, its secrets read from the rendered Secret as Kubernetes would."""
        out = {}
        for entry in container["env"]:
            if "value" in entry:
                out[entry["name"]] = entry["value"]
            else:
                ref = entry["valueFrom"]["secretKeyRef"]
                out[entry["name"]] = self.secret_data(ref["name"])[ref["key"]]
        return out

    def plain_env(self, container):
        return {entry["name"]: entry["value"] for entry in container["env"] if "value" in entry}


def chart_defaults():
    with helm.Chart.load(CHART) as chart:
        return chart.values


def render(variant, **extra):
    return Rendered(merged(merged(CANARIES, variant_values(variant)), extra))


@pytest.fixture(scope="module")
def rendered():
    return {variant: render(variant) for variant in VARIANTS}


def pod_specs(r):
    """Every pod template the chart renders: the workers', the migrate job's, coturn's."""
    return [(obj["kind"], obj["spec"]["template"]["spec"]) for obj in r.objects if obj["kind"] in {"Deployment", "Job", "DaemonSet"}]


def render_error(**values):
    with pytest.raises(helm.HelmError) as caught:
        Rendered(values)
    return str(caught.value)


def dockerfile_lines():
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


# --- Helm's own checks, and Kubernetes' schemas -------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lints_the_chart_without_a_warning(variant):
    for version in KUBERNETES_VERSIONS:
        # strict: a warning fails as an error would (`helm lint --strict`).
        report = helm.lint(CHART, merged(CANARIES, variant_values(variant)), namespace=NAMESPACE, strict=True,
                           kube_version=f"v{version}")
        assert report["errors"] == []
        # 1 is "info" (Helm recommends an icon); 2 and 3 are warnings and errors.
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


# (Kubernetes version, object as JSON) already found valid: the variants share
# most of their objects, and each validation reads the version's 1.4 MB of
# definitions anew.
_valid = set()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_is_valid_for_kubernetes(rendered, variant, version):
    objects = rendered[variant].objects
    assert objects
    for obj in objects:
        seen = (version, json.dumps(obj, sort_keys=True))
        if seen in _valid:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # A CRD's kind (the Prometheus Operator's) has no schema here: the
            # command-line tool only warns for it, and so does this test.
            assert obj["apiVersion"].startswith("monitoring.coreos.com/"), f"no schema for {obj['kind']}"
        except kubernetes_validate.ValidationError as error:
            path = ".".join(map(str, error.path))
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is not valid for Kubernetes {version}: {path}: {error.message}")
        _valid.add(seen)


def test_the_variants_render_what_they_are_for(rendered):
    kinds = {variant: {obj["kind"] for obj in r.objects} for variant, r in rendered.items()}
    assert {"Secret", "Job", "Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds["default"]
    assert {"DaemonSet", "ConfigMap", "ServiceMonitor"}.isdisjoint(kinds["default"])
    assert "DaemonSet" in kinds["coturn-values"]
    assert "ServiceMonitor" in kinds["metrics-values"]
    assert "ConfigMap" in kinds["nginx-values"] and "Ingress" not in kinds["nginx-values"]
    assert "HorizontalPodAutoscaler" not in kinds["redis-cluster-values"]
    assert rendered["redis-cluster-values"].deployment["spec"]["replicas"] == 3


# --- The workers -----------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_workers_and_the_migrate_job_run_the_images_entrypoint(rendered, variant):
    r = rendered[variant]
    (entrypoint,) = [json.loads(line.split(None, 1)[1]) for line in dockerfile_lines() if line.startswith("ENTRYPOINT ")]
    worker = r.container("worker")
    # The worker is what the entrypoint starts with no arguments.
    assert worker["command"] == entrypoint and "args" not in worker
    migrate = r.container("migrate", "Job")
    assert migrate["command"] == entrypoint
    assert migrate["args"] == ["python", "manage.py", "migrate", "--noinput"]
    # One environment for both: the job migrates the database the workers use.
    assert migrate["env"] == worker["env"]
    assert migrate.get("envFrom") == worker.get("envFrom")


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_ask_the_worker_itself_on_the_port_it_serves(rendered, variant):
    r = rendered[variant]
    worker = r.container("worker")
    port = int(r.plain_env(worker)["ASGI_PORT"])
    assert [p["containerPort"] for p in worker["ports"]] == [port]
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = worker[probe]["httpGet"]
        # Past any nginx in the pod: the kubelet asks the worker.
        assert get["port"] == port and get.get("scheme", "HTTP") == "HTTP"
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    # Not restarted before it could start, nor for a slow /readyz (2 s per check).
    assert worker["startupProbe"]["periodSeconds"] * worker["startupProbe"]["failureThreshold"] >= 30
    assert worker["readinessProbe"]["timeoutSeconds"] > 2


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_grace_period_outlasts_the_presleep_and_the_drain(rendered, variant):
    r = rendered[variant]
    pod = r.deployment["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    sleeps = {c["name"]: c["lifecycle"]["preStop"]["exec"]["command"] for c in pod["containers"]}
    assert sleeps["worker"][0] == "sleep"
    pre_stop = int(sleeps["worker"][1])
    assert pre_stop >= 3  # time for the endpoint's removal to reach the Ingress controller
    assert grace > pre_stop + services.DRAIN_TIMEOUT
    if "nginx" in sleeps:
        # nginx stops after the worker's sockets have closed through it, and
        # what it then waits for still fits in the grace period.
        nginx_sleep = int(sleeps["nginx"][1])
        assert nginx_sleep > pre_stop + services.DRAIN_TIMEOUT
        shutdown = int(re.search(r"worker_shutdown_timeout (\d+)s;", r.one("ConfigMap")["data"]["nginx.conf"]).group(1))
        assert grace > nginx_sleep + shutdown


def test_the_chart_refuses_a_grace_period_the_drain_does_not_fit_in():
    # The chart's own bound is the worker's: one second less is refused, the bound itself is not.
    error = render_error(worker={"preStopSleepSeconds": 5, "terminationGracePeriodSeconds": 5 + services.DRAIN_TIMEOUT})
    assert "terminationGracePeriodSeconds" in error
    Rendered({"worker": {"preStopSleepSeconds": 5, "terminationGracePeriodSeconds": 6 + services.DRAIN_TIMEOUT}})


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_run_unprivileged_on_a_read_only_root(rendered, variant):
    (uid,) = re.findall(r"useradd [^\n]*--uid (\d+)", "\n".join(dockerfile_lines()))
    for kind, spec in pod_specs(rendered[variant]):
        assert spec["automountServiceAccountToken"] is False, kind
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == int(uid), kind
        assert context["seccompProfile"]["type"] == "RuntimeDefault"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert not any("hostPath" in v for v in volumes.values())
        for container in spec.get("initContainers", []) + spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, (kind, container["name"])
            assert security["readOnlyRootFilesystem"] is True, (kind, container["name"])
            assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]
            assert "privileged" not in security and "runAsUser" not in security
            # What it writes goes to an emptyDir.
            writable = [m for m in container["volumeMounts"] if not m.get("readOnly")]
            assert writable and all("emptyDir" in volumes[m["name"]] for m in writable), (kind, container["name"])


def test_workers_spread_across_nodes_with_a_disruption_budget_and_an_autoscaler(rendered):
    r = rendered["default"]
    pod = r.deployment["spec"]["template"]["spec"]
    labels = r.deployment["spec"]["template"]["metadata"]["labels"]
    keys = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= set(keys)
    for constraint in keys.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
    # Selectors that pick the workers and nothing else (not the migrate job's pods).
    job_labels = r.one("Job")["spec"]["template"]["metadata"]["labels"]
    for selector in (r.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], r.one("Service")["spec"]["selector"]):
        assert selector.items() <= labels.items() and not selector.items() <= job_labels.items()
    assert r.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    hpa = r.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": r.deployment["metadata"]["name"]}
    assert hpa["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    # The HPA owns the number of workers.
    assert "replicas" not in r.deployment["spec"]


# --- Secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_secret_value_outside_a_secret(rendered, variant):
    r = rendered[variant]
    secrets = {"canary-db-password-81f2", "canary-redis-password-4c9a"}
    for obj in r.all("Secret"):
        secrets |= set(r.secret_data(obj["metadata"]["name"]).values())
    needles = secrets | {base64.b64encode(s.encode()).decode() for s in secrets}
    for path, text in r.files.items():
        if path.endswith("/secret.yaml"):
            continue
        for needle in needles:
            assert needle not in text, f"{path} holds a secret value"
    # Every secret setting a pod reads, it reads from a Secret.
    for kind, spec in pod_specs(r):
        for container in spec.get("initContainers", []) + spec["containers"]:
            for entry in container.get("env", []):
                if entry["name"] in SECRET_ENV | {"TURN_SECRET"}:
                    assert "secretKeyRef" in entry["valueFrom"], (kind, entry["name"])


def test_secrets_in_env_are_refused():
    assert "env.PEERJS_TURN_SECRET is a secret" in render_error(env={"PEERJS_TURN_SECRET": "x" * 40})
    assert "env.DATABASE_URL is a secret" in render_error(env={"DATABASE_URL": "postgres://u:p@db/x"})


def test_generated_secrets_are_fresh_offline_and_kept_on_upgrade_by_lookup(rendered):
    name = f"{RELEASE}-peerserver"
    first, second = rendered["default"].secret_data(name), render("default").secret_data(name)
    for key in ("DJANGO_SECRET_KEY", "PEERJS_TURN_SECRET", "PEERJS_METRICS_TOKEN"):
        assert len(first[key]) >= 32 and first[key] != second[key]
    # Offline, Helm's lookup finds nothing, hence fresh values above; in a
    # cluster it reads the Secret of this very name, whose values win.
    template = (CHART / "templates" / "secret.yaml").read_text()
    assert re.search(r'\$name := include "peerserver.fullname" \.', template)
    assert re.search(r'lookup "v1" "Secret" \.Release\.Namespace \$name', template)
    assert "get $kept $key | default (randAlphaNum" in template


def test_existing_secrets_are_used_and_nothing_is_generated(rendered):
    r = rendered["sentinel-values"]
    values = r.values
    assert r.all("Secret") == []  # every secret comes from the operator's own Secrets
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in r.container("worker")["env"] if "valueFrom" in e}
    assert refs["DATABASE_URL"] == {"name": values["database"]["existingSecret"], "key": values["database"]["existingSecretKey"]}
    assert refs["REDIS_URL"] == {"name": values["redis"]["existingSecret"], "key": values["redis"]["existingSecretKey"]}
    for key in ("DJANGO_SECRET_KEY", "PEERJS_TURN_SECRET", "PEERJS_METRICS_TOKEN"):
        assert refs[key] == {"name": values["secrets"]["existingSecret"], "key": key}


# --- Hooks: the Secret, then the migrations, then the workers ---------------------------------


def hook(obj):
    annotations = obj["metadata"].get("annotations") or {}
    if "helm.sh/hook" not in annotations:
        return None
    return annotations["helm.sh/hook"], int(annotations.get("helm.sh/hook-weight", "0"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_migrations_run_after_their_secret_and_before_the_workers(rendered, variant):
    r = rendered[variant]
    job = r.one("Job")
    events, job_weight = hook(job)
    # Helm runs pre-install/pre-upgrade hooks, and waits for a Job to finish,
    # before it creates or updates the release's other objects.
    assert events == HOOKS
    hooked = {obj["kind"] for obj in r.objects if hook(obj)}
    assert hooked <= {"Secret", "Job"}
    # Every Secret the job reads is either made by a hook of a lower weight, or
    # one the operator made before installing.
    made = {obj["metadata"]["name"]: obj for obj in r.all("Secret")}
    existing = {r.values.get(part, {}).get("existingSecret") for part in ("secrets", "database", "redis")} - {None, ""}
    for entry in job["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "valueFrom" in entry:
            name = entry["valueFrom"]["secretKeyRef"]["name"]
            if name in made:
                secret_events, secret_weight = hook(made[name])
                assert secret_events == HOOKS and secret_weight < job_weight
            else:
                assert name in existing, f"{entry['name']} comes from {name}, which nothing makes"
    # The hooks are replaced on the next upgrade, not piled up.
    for obj in [job, *made.values()]:
        assert obj["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation"


# --- The way in: Ingress, or the project's nginx ----------------------------------------------


def test_the_ingress_carries_the_socket_and_the_workers_believe_only_it(rendered):
    r = rendered["default"]
    ingress = r.one("Ingress")
    annotations = ingress["metadata"]["annotations"]
    # The socket lives as long as its peer: ingress-nginx's 60 s would cut
    # an idle one (a background tab's heartbeats are throttled; the app closes
    # a socket silent for PEERJS_ALIVE_TIMEOUT, 90 s).
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{name}"]) >= 3600
    # A worker that answers a new socket 503 (draining, database away) is skipped.
    assert "http_503" in annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == r.values.get("host", "peerserver.example.com")
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")  # pages, API and socket alike
    # Ingress -> Service port -> the worker's port.
    service = r.one("Service")
    assert path["backend"]["service"]["name"] == service["metadata"]["name"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == path["backend"]["service"]["port"]["name"]]
    worker = r.container("worker")
    (container_port,) = [p for p in worker["ports"] if p["name"] == port["targetPort"]]
    env = r.plain_env(worker)
    assert container_port["containerPort"] == int(env["ASGI_PORT"])
    # The client's address comes from the controller's X-Forwarded-For, and
    # from no one else.
    assert env["PEERJS_PROXIED"] == "1"
    trusted = env["PEERJS_TRUSTED_PROXIES"].split(",")
    assert "*" not in trusted and not any(ipaddress.ip_network(n).is_global for n in trusted)
    # Nobody reads /metrics by address: any pod of those networks could claim one.
    assert env["PEERJS_METRICS_ALLOW"] == ""
    assert env["DJANGO_ALLOWED_HOSTS"].split(",") == [rule["host"]]
    cluster = r.plain_env(rendered["redis-cluster-values"].container("worker"))
    assert cluster["PEERJS_TRUSTED_PROXIES"] == "10.244.0.0/16"  # the value, as given
    assert cluster["DJANGO_HTTPS"] == "1"


def test_the_project_nginx_sits_in_each_worker_pod_at_the_edge(rendered):
    r = rendered["nginx-values"]
    pod = r.deployment["spec"]["template"]["spec"]
    nginx, worker = r.container("nginx"), r.container("worker")
    env = r.plain_env(worker)
    # nginx, at the pod's loopback, is the one proxy the worker believes.
    assert env["PEERJS_PROXIED"] == "1" and env["PEERJS_TRUSTED_PROXIES"] == "127.0.0.1,::1"
    conf = r.one("ConfigMap")["data"]["peerserver.conf"]
    assert f"server 127.0.0.1:{env['ASGI_PORT']} max_fails=1 fail_timeout=5s;" in conf
    # The Service sends browsers to nginx (HTTP and HTTPS), Prometheus past it.
    service = r.one("Service")["spec"]
    assert service["type"] == "LoadBalancer" and service["externalTrafficPolicy"] == "Local"
    by_target = {p["targetPort"]: p["port"] for p in service["ports"]}
    named = {p["name"]: p["containerPort"] for c in pod["containers"] for p in c["ports"]}
    assert named["http"] == 8080 and named["https"] == 8443 and by_target == {"http": 80, "https": 443}
    assert named["worker"] == int(env["ASGI_PORT"])
    mounts = {m["mountPath"]: m["name"] for m in nginx["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/peerserver-tls"]]["secret"]["secretName"] == "peerserver-tls"
    assert volumes[mounts["/etc/peerserver-nginx"]]["configMap"]["name"] == r.one("ConfigMap")["metadata"]["name"]
    # A new configuration rolls the pods.
    assert "checksum/nginx" in r.deployment["spec"]["template"]["metadata"]["annotations"]
    # The template is the project's own, not a copy.
    assert (CHART / "files" / "peerserver.conf.template").resolve() == ROOT / "deploy" / "nginx" / "peerserver.conf.template"
    assert "Behind an Ingress" in render_error(nginx={"enabled": True})


def nginx_prefix(r, directory, tls=None):
    """The chart's nginx configuration in ``directory``, its pod paths moved there."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tmp").mkdir(exist_ok=True)
    # nginx's workers run as "nobody" here (the master as root): they must reach their temp dirs.
    for path in (directory, directory / "tmp"):
        path.chmod(0o755)
    moved = {"/etc/peerserver-nginx/": f"{directory}/", "/tmp/": f"{directory}/tmp/"}
    if tls:
        moved.update({"/etc/peerserver-tls/tls.crt": str(tls.cert), "/etc/peerserver-tls/tls.key": str(tls.key)})
    pattern = re.compile("|".join(map(re.escape, moved)))
    for name, text in r.one("ConfigMap")["data"].items():
        (directory / name).write_text(pattern.sub(lambda match: moved[match.group(0)], text))
    return directory / "nginx.conf"


def test_nginx_accepts_the_charts_https_configuration(rendered, tmp_path):
    assert Path(NGINX).is_file(), "nginx is missing: ./scripts/setup.sh --test installs it"
    r = rendered["nginx-values"]
    conf = nginx_prefix(r, tmp_path / "nginx", tls=Certificates(tmp_path / "tls"))
    text = (tmp_path / "nginx" / "peerserver.conf").read_text()
    assert "listen 8443 ssl;\n    listen [::]:8443 ssl;" in text
    # Redirected to the Service's HTTPS port (443), not the pod's 8443.
    assert "return 301 https://$host$request_uri;" in text
    result = subprocess.run([NGINX, "-t", "-e", "stderr", "-p", str(tmp_path / "nginx"), "-c", str(conf)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


# --- A real worker with the chart's environment --------------------------------------------

# The live variant: the project's nginx over plain HTTP (so that the worker is
# asked over loopback, where the tests are), with the ServiceMonitor and the
# HPA's custom metric, and 127.0.0.1 among the hosts the tests ask for.
LIVE = {
    "ingress": {"enabled": False},
    "nginx": {"enabled": True},
    "django": {"extraAllowedHosts": ["127.0.0.1"]},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "autoscaling": {"openSocketsPerPod": "2000"},
}


@pytest.fixture(scope="module")
def live(redis_server, tmp_path_factory):
    """A worker started by the image's entrypoint with the environment the chart
    renders for it, on a database the chart's migrate job made.

    Only what points at this machine differs: the database is a fresh SQLite
    file, Redis the tests' own, and the test's Worker picks the address and port.
    """
    r = Rendered(LIVE)
    env = r.env(r.container("worker"))
    directory = tmp_path_factory.mktemp("helm-live")
    env.update(DATABASE_URL=f"sqlite:///{directory}/peers.sqlite3", REDIS_URL=redis_server.url)
    job = r.container("migrate", "Job")
    # The image's /app is this checkout; its python is this virtualenv's.
    migrated = subprocess.run(
        [*(part.replace("/app/", f"{ROOT}/", 1) for part in job["command"]), *job["args"]],
        env={**os.environ, **env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    worker = Worker(SimpleNamespace(url=env["DATABASE_URL"], tmp=directory), env, server=env["ASGI_SERVER"], name="helm-chart")
    yield r, env, worker, migrated
    worker.stop()


def test_the_migrate_job_makes_the_schema_the_workers_serve_from(live):
    r, env, worker, migrated = live
    assert migrated.returncode == 0, migrated.stderr
    assert "Applying signaling.0001_initial... OK" in migrated.stdout
    # The worker on that database registers a peer (GET /id reads and writes the registry).
    status, _, body = worker.get(f"{BASE}/peerjs/id")
    assert status == 200 and body


def test_a_worker_answers_the_probes_the_chart_sets(live):
    r, env, worker, _ = live
    container = r.container("worker")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        # As the kubelet asks: plain HTTP, the pod's address as Host.
        status, _, body = worker.get(container[probe]["httpGet"]["path"], {"Host": f"10.244.3.7:{worker.port}"})
        assert status == 200, (probe, body)
    status, _, body = worker.get("/readyz")
    assert json.loads(body) == {"ready": True, "database": "ok", "redis": "ok", "draining": False}


def test_the_servicemonitor_reads_metrics_with_the_token_and_finds_the_autoscalers_metric(live):
    r, env, worker, _ = live
    (endpoint,) = r.one("ServiceMonitor")["spec"]["endpoints"]
    credentials = endpoint["authorization"]["credentials"]
    token = r.secret_data(credentials["name"])[credentials["key"]]
    assert token == env["PEERJS_METRICS_TOKEN"]
    # The ServiceMonitor's port is the worker's own (past nginx).
    (port,) = [p for p in r.one("Service")["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["targetPort"] == int(env["ASGI_PORT"])
    assert worker.get(endpoint["path"])[0] == 403
    status, _, body = worker.get(endpoint["path"], {"Authorization": f"Bearer {token}"})
    assert status == 200
    (metric,) = [m for m in r.one("HorizontalPodAutoscaler")["spec"]["metrics"] if m["type"] == "Pods"]
    name = metric["pods"]["metric"]["name"]
    assert f"# TYPE {name} gauge" in body.splitlines()


async def test_the_charts_nginx_serves_pages_and_the_socket_from_its_worker(live, tmp_path):
    _, _, worker, _ = live
    port = free_port()
    r = Rendered(merged(LIVE, {"worker": {"port": worker.port}, "nginx": {"port": port}}))
    conf = nginx_prefix(r, tmp_path / "nginx")
    proc = subprocess.Popen([NGINX, "-e", "stderr", "-p", str(tmp_path / "nginx"), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def answers():
            assert proc.poll() is None, proc.stderr.read().decode()
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(answers, 10, f"nginx on {port}")
        front = f"http://127.0.0.1:{port}"
        assert http_get(f"{front}{BASE}/")[0] == 200
        assert http_get(f"{front}/readyz")[0] == 200
        # Each worker's metrics are Prometheus', which asks the worker itself.
        assert http_get(f"{front}/metrics")[0] == 404

        class Front:
            ws = f"ws://127.0.0.1:{port}"

        peer = await client.connect(Front)
        await peer.close()
    finally:
        terminate(proc)


# --- Redis ------------------------------------------------------------------------------------


def test_redis_cluster_and_sentinel_reach_the_workers_as_settings(rendered):
    cluster = rendered["redis-cluster-values"]
    env = cluster.env(cluster.container("worker"))
    assert env["REDIS_CLUSTER"] == "1" and env["REDIS_URL"] == cluster.values["redis"]["url"]
    assert "REDIS_CLUSTER" not in rendered["default"].plain_env(rendered["default"].container("worker"))
    sentinel = rendered["sentinel-values"]
    values = sentinel.values["redis"]["sentinel"]
    env = sentinel.plain_env(sentinel.container("worker"))
    assert env["PEERJS_REDIS_SENTINELS"] == ",".join(values["hosts"])
    assert env["PEERJS_REDIS_SENTINEL_MASTER"] == values["masterSet"]
    assert "REDIS_CLUSTER" not in env
    # The workers read them as their Sentinel settings (REDIS_URL comes from the operator's Secret).
    redis = conf._redis_options(conf.from_environ({**env, "REDIS_URL": "redis://:pw@master/0"}))
    assert redis.redis_sentinels == tuple((host.rsplit(":", 1)[0], int(host.rsplit(":", 1)[1])) for host in values["hosts"])
    assert redis.redis_sentinel_master == values["masterSet"]
    assert env["PEERJS_REDIS_SENTINEL_AUTH"] == "1" and redis.redis_sentinel_auth
    assert "PEERJS_REDIS_SENTINEL_AUTH" not in rendered["default"].plain_env(rendered["default"].container("worker"))
    assert env["PEERJS_REDIS_SENTINEL_TLS"] == "1" and redis.redis_sentinel_tls
    assert "PEERJS_REDIS_SENTINEL_TLS" not in rendered["default"].plain_env(rendered["default"].container("worker"))
    assert "choose one" in render_error(redis={"cluster": True, "sentinel": {"enabled": True, "hosts": ["s:26379"]}})


def test_plain_settings_pass_through_as_values(rendered):
    r = rendered["metrics-values"]
    env = r.plain_env(r.container("worker"))
    assert env["PEERJS_CONCURRENT_LIMIT"] == "50000" and env["PEERJS_ALLOW_DISCOVERY"] == "false"
    # A big number stays a number the worker reads (Helm holds it as a float).
    assert env["PEERJS_QUEUE_TOTAL_MAX_BYTES"] == "134217728"
    # An operator's value wins over the chart's.
    overridden = render("default", env={"PEERJS_TRUSTED_PROXIES": "10.42.0.0/16"})
    assert overridden.plain_env(overridden.container("worker"))["PEERJS_TRUSTED_PROXIES"] == "10.42.0.0/16"


# --- coturn ----------------------------------------------------------------------------------


def test_coturn_runs_on_the_nodes_network_and_the_workers_hand_out_its_address(rendered):
    r = rendered["coturn-values"]
    spec = r.one("DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True
    (container,) = spec["containers"]
    args = container["args"]
    values = merged(chart_defaults()["coturn"], r.values["coturn"])
    assert f"--min-port={values['minPort']}" in args and f"--max-port={values['maxPort']}" in args
    assert {(p["containerPort"], p["protocol"]) for p in container["ports"]} == {(values["port"], "UDP"), (values["port"], "TCP")}
    assert "--use-auth-secret" in args and not any(a.startswith("--static-auth-secret") for a in args)
    # The secret reaches coturn from the Secret the workers read it from.
    (init,) = spec["initContainers"]
    (secret_env,) = init["env"]
    worker_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in r.container("worker")["env"] if "valueFrom" in e}
    assert secret_env["valueFrom"]["secretKeyRef"] == worker_refs["PEERJS_TURN_SECRET"]
    at = f"{values['host']}:{values['port']}"
    assert r.plain_env(r.container("worker"))["PEERJS_TURN_URLS"] == f"stun:{at},turn:{at}?transport=udp,turn:{at}?transport=tcp"


def test_coturn_denies_every_range_docker_compose_denies(rendered):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose_denied = {a.split("=", 1)[1].split()[0] for a in compose["services"]["coturn"]["command"] if a.startswith("--denied-peer-ip=")}
    args = rendered["coturn-values"].one("DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    chart_denied = {a.split("=", 1)[1] for a in args if a.startswith("--denied-peer-ip=")}
    assert compose_denied and compose_denied <= chart_denied
    for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8", "fc00::/7"):
        network = ipaddress.ip_network(private)
        assert any(
            ipaddress.ip_address(first) <= network[0] and network[-1] <= ipaddress.ip_address(last)
            for first, last in (r.split("-") for r in chart_denied)
            if ipaddress.ip_address(first).version == network.version
        ), f"{private} is not denied"
    assert {"--no-tcp-relay", "--no-multicast-peers"} <= set(args)


def test_coturn_with_the_charts_arguments_takes_the_workers_credentials_and_relays_to_no_private_peer(rendered, tmp_path):
    r = rendered["coturn-values"]
    spec = r.one("DaemonSet")["spec"]["template"]["spec"]
    secret = r.env(r.container("worker"))["PEERJS_TURN_SECRET"]
    run = tmp_path / "run"
    run.mkdir()
    # The init container's command writes the config, with the secret, as in the pod.
    (init,) = spec["initContainers"]
    subprocess.run([a.replace("/run/coturn", str(run)) for a in init["command"]], env={"PATH": os.environ["PATH"], "TURN_SECRET": secret},
                   check=True, timeout=10)
    assert (run / "turnserver.conf").stat().st_mode & 0o077 == 0
    (container,) = spec["containers"]
    port = free_udp_and_tcp_port()
    args = [a.replace("/run/coturn", str(run)) for a in container["args"] if not a.startswith("--external-ip")]
    args = [f"--listening-port={port}" if a.startswith("--listening-port=") else a for a in args]
    # On loopback here, not this machine's every address as on a node; and
    # loopback peers allowed, which coturn refuses by itself, so that only
    # the chart's denied ranges can refuse them.
    log = open(tmp_path / "coturn.log", "wb")
    proc = subprocess.Popen([*container["command"], *args, "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", "--allow-loopback-peers"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        def answers():
            assert proc.poll() is None, (tmp_path / "coturn.log").read_text()
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(answers, 10, f"coturn on {port}")
        username = f"{int(time.time()) + 3600}:helm"

        def allocate(credential):
            return subprocess.run(["turnutils_uclient", "-n", "1", "-u", username, "-w", credential, "-p", str(port), "-y", "127.0.0.1"],
                                  capture_output=True, text=True, timeout=30).stdout

        # A credential made as the workers make it is accepted; the relay to a
        # peer in a denied range (here loopback, 127.0.0.0/8) is then refused.
        assert "403 (Forbidden IP)" in allocate(turn.credential(secret, username))
        assert "Cannot complete Allocation" in allocate(turn.credential("not-" + secret, username))
    finally:
        proc.kill()  # nothing to keep; SIGTERM takes coturn 1-2 s
        proc.wait()
        log.close()


# --- Documentation -----------------------------------------------------------------------------


def test_every_value_is_documented():
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        key = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if key:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#"), f"values.yaml line {number + 1}: {key.group(2)} has no comment above it"
    readme = (CHART / "README.md").read_text()
    for top in yaml.safe_load((CHART / "values.yaml").read_text()):
        assert f"`{top}" in readme, f"README.md does not mention {top}"
