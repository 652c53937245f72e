"""The docker-compose cluster, checked without a Docker engine.

No Docker daemon runs on these machines, so Compose v1 (Debian's
docker-compose 1.29) validates the file with `docker-compose config`, the
file is checked for what `docker compose up --build` relies on, the nginx
template is rendered the two ways it is used (the official image's envsh and
envsubst steps, and scripts/cluster.sh) and handed to the real nginx for
`nginx -t`, and the worker entrypoint's switches are run against stand-in
servers.
"""
import ipaddress
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from signaling import conf, turn
from signaling.applications import AppSettings
from tests.servers import free_port, free_udp_and_tcp_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
TEMPLATE = ROOT / "deploy" / "nginx" / "peerserver.conf.template"
ENTRYPOINT = ROOT / "deploy" / "worker-entrypoint.sh"
CLUSTER = ROOT / "scripts" / "cluster.sh"
PROMETHEUS = ROOT / "deploy" / "prometheus"
TLS_ENVSH = ROOT / "deploy" / "nginx" / "tls.envsh"
NGINX = "/usr/sbin/nginx"
MAKE_SECRETS = ROOT / "deploy" / "make_secrets.py"
# Where the services find what the secrets service made.
SECRETS_DIR = "/run/peerserver-secrets"
# What an operator may set; `docker compose up --build` needs none of it.
OPERATOR_ENV = {
    "DJANGO_SECRET_KEY": "operator-chosen-secret-key-3b8e1f0c7a6d4e2b9f5c",
    "TURN_SECRET": "operator-chosen-turn-secret-9d2c4b1e",
    "POSTGRES_PASSWORD": "operator-chosen-database-password-41c7",
}

SERVICES = {"secrets", "redis", "postgres", "migrate", "worker1", "worker2", "nginx", "prometheus", "coturn"}
WORKERS = ["worker1", "worker2"]
HEALTH = "service_healthy"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def interpolate(value, env={}):
    """A compose value as compose sees it with ``env`` set: ${X:-d} is d unless X is set;
    ${X:?why} is X, which must be set."""
    if not isinstance(value, str):
        return value

    def substitute(match):
        name, kind, word = match.group(1), match.group(2), match.group(3)
        if kind == ":-":
            return env.get(name) or word
        if kind == ":?":
            assert env.get(name), f"docker-compose.yml requires {name}: {word}"
            return env[name]
        raise AssertionError(f"{match.group(0)} has neither a default nor an error message in docker-compose.yml")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", substitute, value)


def environment(service, operator_env={}):
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: interpolate(str(value), operator_env) for name, value in env.items()}


def depends_on(service):
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def command_text(service):
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def health_test(service):
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


# --- the compose file -----------------------------------------------------------


def docker_compose_config(env):
    """`docker-compose config` with ``env`` and nothing else in its environment."""
    compose_v1 = shutil.which("docker-compose")
    assert compose_v1, "docker-compose (Compose v1) is missing: ./scripts/setup.sh --test installs it"
    return subprocess.run(
        [compose_v1, "-f", str(COMPOSE), "config"],
        cwd=ROOT, env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **env},
        capture_output=True, text=True, timeout=60,
    )


def test_compose_v1_accepts_the_file_with_no_environment_at_all():
    # `docker-compose up --build` (Debian's Compose 1.29) validates the file
    # first; it rejected healthcheck keys only Compose v2 knows, then stopped
    # at every secret nobody had set.
    result = docker_compose_config({})
    assert result.returncode == 0, result.stderr
    assert "is not set" not in result.stderr  # no variable without a default
    rendered = yaml.safe_load(result.stdout)
    assert SERVICES <= set(rendered["services"])
    worker = rendered["services"]["worker1"]["environment"]
    assert worker["DJANGO_SECRET_KEY_FILE"] == f"{SECRETS_DIR}/django_secret_key"
    assert "DJANGO_SECRET_KEY" not in worker and "PEERJS_TURN_SECRET" not in worker


def test_explicit_secrets_reach_only_the_service_that_writes_them():
    result = docker_compose_config(OPERATOR_ENV)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert rendered["services"]["secrets"]["environment"] == OPERATOR_ENV
    for name, service in rendered["services"].items():
        if name != "secrets":
            text = yaml.safe_dump(service)
            assert not [value for value in OPERATOR_ENV.values() if value in text], name


def test_compose_file_parses_and_names_every_service(services):
    assert SERVICES <= set(services), f"missing services: {SERVICES - set(services)}"


@pytest.mark.parametrize("name", ["migrate", *WORKERS])
def test_workers_and_migrate_build_from_the_one_dockerfile(services, name):
    build = services[name]["build"]
    if isinstance(build, str):
        build = {"context": build}
    assert (ROOT / build["context"]).resolve() == ROOT
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert (ROOT / "Dockerfile").is_file()
    # One image: the same tag everywhere, so compose builds one thing.
    assert services[name]["image"] == services["worker1"]["image"]


@pytest.mark.parametrize("name", ["redis", "postgres", *WORKERS])
def test_services_others_wait_for_have_healthchecks(services, name):
    assert health_test(services[name]).split()[0] in {"CMD", "CMD-SHELL"}


def test_healthchecks_ask_the_right_questions(services):
    assert "redis-cli ping" in health_test(services["redis"])
    assert "pg_isready" in health_test(services["postgres"])
    for name in WORKERS:
        # Healthy means ready (/readyz), asked by the script the image carries
        # (tests/test_health.py runs it against real workers).
        assert health_test(services[name]) == "CMD python /app/deploy/healthcheck.py"
        assert (ROOT / "deploy" / "healthcheck.py").is_file()
    # The one-shot migrate job runs no server to ask.
    assert services["migrate"]["healthcheck"] == {"disable": True}


def test_postgres_keeps_its_data_in_a_named_volume(compose, services):
    volumes = [v.split(":")[0] for v in services["postgres"]["volumes"]]
    assert any(v in (compose.get("volumes") or {}) for v in volumes)


def test_migrations_run_once_before_any_worker(services):
    migrate = services["migrate"]
    assert "manage.py migrate --noinput" in command_text(migrate)
    assert migrate.get("restart", "no") == "no"
    assert depends_on(migrate).get("postgres") == HEALTH
    for name in WORKERS:
        deps = depends_on(services[name])
        assert deps.get("migrate") == "service_completed_successfully"
        assert deps.get("redis") == HEALTH
        assert deps.get("postgres") == HEALTH
        assert "migrate" not in command_text(services[name])
    # The one job that migrates is the only service with a migrate command.
    migrating = [n for n, s in services.items() if "migrate" in command_text(s)]
    assert migrating == ["migrate"]


@pytest.mark.parametrize("name", ["migrate", *WORKERS])
def test_workers_share_redis_postgres_and_run_proxied(services, name):
    env = environment(services[name])
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["DATABASE_URL"].startswith("postgres://")
    assert "@postgres:5432/" in env["DATABASE_URL"]
    assert env["PEERJS_PROXIED"] == "1"
    assert env["DJANGO_DEBUG"] == "0"
    # The secrets are files the secrets service made, in a volume of their own.
    assert env["DJANGO_SECRET_KEY_FILE"] == f"{SECRETS_DIR}/django_secret_key"
    assert env["PEERJS_TURN_SECRET_FILE"] == f"{SECRETS_DIR}/turn_secret"
    assert env["PGPASSFILE"] == f"{SECRETS_DIR}/pgpass"
    assert "@" in env["DATABASE_URL"] and ":" not in env["DATABASE_URL"].split("//")[1].split("@")[0]  # no password in it
    assert f"secrets:{SECRETS_DIR}:ro" in services[name]["volumes"]
    assert depends_on(services[name])["secrets"] == "service_completed_successfully"
    hosts = env["DJANGO_ALLOWED_HOSTS"].split(",")
    assert {"localhost", "127.0.0.1", "0.0.0.0", "[::1]", "nginx"} <= set(hosts)
    assert not any("*" in host for host in hosts)  # never every host by default
    assert env["ASGI_SERVER"] in {"daphne", "uvicorn"}
    assert env["PEERJS_TRUSTED_PROXIES"] == "*"  # only nginx reaches the workers (see the file)
    assert env["DJANGO_HTTPS"] == "0"
    assert environment(services[name], {**OPERATOR_ENV, "DJANGO_HTTPS": "1"})["DJANGO_HTTPS"] == "1"
    # TURN credentials for the host browsers reach coturn at.
    urls = environment(services[name], {**OPERATOR_ENV, "TURN_HOST": "peers.lan"})["PEERJS_TURN_URLS"].split(",")
    assert urls == ["stun:peers.lan:3478", "turn:peers.lan:3478?transport=udp", "turn:peers.lan:3478?transport=tcp"]


def test_every_service_that_reads_a_secret_waits_for_the_secrets_service(services):
    secrets = services["secrets"]
    assert secrets.get("restart", "no") == "no" and secrets["image"] == services["worker1"]["image"]
    assert secrets["command"] == ["python", "/app/deploy/make_secrets.py", "--owner", "peerserver", SECRETS_DIR]
    assert secrets["volumes"] == [f"secrets:{SECRETS_DIR}"]
    for name in ["postgres", "migrate", "coturn", *WORKERS]:
        assert f"secrets:{SECRETS_DIR}:ro" in services[name]["volumes"], name
        assert depends_on(services[name])["secrets"] == "service_completed_successfully", name
    # The database gets the password the workers' libpq is given.
    assert environment(services["postgres"])["POSTGRES_PASSWORD_FILE"] == f"{SECRETS_DIR}/postgres_password"


def test_nginx_publishes_8080_and_waits_for_healthy_workers(services):
    nginx = services["nginx"]
    assert "8080:8080" in [str(p) for p in nginx["ports"]]
    assert "8443:8443" in [str(p) for p in nginx["ports"]]
    deps = depends_on(nginx)
    for name in WORKERS:
        assert deps.get(name) == HEALTH


def test_nginx_renders_the_shared_template_for_every_worker(services):
    nginx = services["nginx"]
    mounts = {}
    for volume in nginx["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = (COMPOSE.parent / source).resolve()
    templates = {t: s for t, s in mounts.items() if t.startswith("/etc/nginx/templates/")}
    assert list(templates.values()) == [TEMPLATE]
    assert all(t.endswith(".template") for t in templates)
    # The image sources /docker-entrypoint.d/*.envsh before rendering, in
    # name order: ours must sort before 20-envsubst-on-templates.sh.
    envsh = {t: s for t, s in mounts.items() if t.startswith("/docker-entrypoint.d/")}
    assert list(envsh.values()) == [TLS_ENVSH]
    assert all(t.endswith(".envsh") and Path(t).name < "20-envsubst-on-templates.sh" for t in envsh)
    assert os.access(TLS_ENVSH, os.X_OK)  # the image skips envsh files without the exec bit
    assert mounts["/etc/nginx/tls"] == ROOT / "deploy" / "tls"
    env = environment(nginx)
    assert env["PEERSERVER_PORT"] == "8080"
    assert env["PEERSERVER_TLS_PORT"] == "8443"
    assert env["PEERSERVER_HTTPS"] == "0"
    assert environment(nginx, {**OPERATOR_ENV, "DJANGO_HTTPS": "1"})["PEERSERVER_HTTPS"] == "1"  # one switch for both
    for name in WORKERS:
        assert re.search(rf"server {name}:8000 max_fails=\d+ fail_timeout=\w+;", env["PEERSERVER_UPSTREAMS"])
    # The last try names the same workers, none of which it may ever take out.
    last_try = re.findall(r"server (\S+) max_fails=0;", env["PEERSERVER_LAST_TRY_UPSTREAMS"])
    assert last_try == re.findall(r"server (\S+) ", env["PEERSERVER_UPSTREAMS"]) == [f"{name}:8000" for name in WORKERS]


# --- the nginx template -----------------------------------------------------------


def directives(conf):
    """(name, args) of every directive, comments dropped."""
    text = re.sub(r"#[^\n]*", "", conf)
    return [
        (parts[0], " ".join(parts[1:]))
        for parts in (statement.split() for statement in re.split(r"[;{}]", text))
        if parts
    ]


def test_template_upgrades_websockets_and_forwards_the_client():
    found = directives(TEMPLATE.read_text())
    headers = {args.split()[0].lower(): args.split(None, 1)[1] for name, args in found
               if name == "proxy_set_header"}
    assert ("proxy_http_version", "1.1") in found
    assert headers["upgrade"] == "$http_upgrade"
    assert headers["connection"] == "$connection_upgrade"
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-forwarded-proto"] == "$scheme"
    assert headers["host"] in {"$host", "$http_host"}
    assert ("map", "$http_upgrade $connection_upgrade") in found
    # The socket's location keeps idle-but-alive sockets open for long.
    assert ("proxy_read_timeout", "1h") in found


TEMPLATE_VARIABLES = {
    "PEERSERVER_PORT", "PEERSERVER_UPSTREAMS", "PEERSERVER_LAST_TRY_UPSTREAMS", "PEERSERVER_ACCESS_LOG", "PEERSERVER_TLS",
    "PEERSERVER_IPV6",
}


def test_template_leaves_nginx_variables_to_nginx():
    # envsubst only ever sees the PEERSERVER_ names: an nginx $variable
    # written as ${name} or named like an environment variable would be
    # clobbered by the official image's rendering.
    text = TEMPLATE.read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) == TEMPLATE_VARIABLES
    nginx_vars = set(re.findall(r"\$([A-Za-z_]\w*)", text)) - TEMPLATE_VARIABLES
    assert nginx_vars and all(v == v.lower() for v in nginx_vars)


def test_template_logs_paths_never_query_strings():
    # The socket's query string holds the peer's token.
    found = directives(TEMPLATE.read_text())
    formats = [args for name, args in found if name == "log_format"]
    assert len(formats) == 1 and formats[0].startswith("peerserver ")
    assert "$uri" in formats[0]
    for leaky in ["$request ", "$request\"", "$request_uri", "$args", "$query_string", "$arg_"]:
        assert leaky not in formats[0]
    # The one access log uses it (the directives() split cannot keep ${...}).
    assert re.findall(r"^\s*access_log\s+(.*);", TEMPLATE.read_text(), re.M) == ["${PEERSERVER_ACCESS_LOG} peerserver"]


def test_template_skips_workers_that_fail_fast():
    found = directives(TEMPLATE.read_text())
    assert ("proxy_next_upstream", "error timeout http_502 http_503") in found
    assert ("proxy_connect_timeout", "2s") in found


def location(conf, name):
    """The directives of one location block of the template (no nested blocks)."""
    match = re.search(rf"location {re.escape(name)} \{{([^{{}}]*)\}}", re.sub(r"#[^\n]*", "", conf))
    assert match, name
    return directives(match.group(1))


def test_template_asks_other_workers_first_and_one_last_without_the_header():
    text = TEMPLATE.read_text()
    server_level = directives(text)
    # Sent only where a location sets it; empty, nginx drops a client's own.
    assert ("set", '$peerserver_retry_elsewhere ""') in server_level
    assert ("proxy_set_header", "X-PeerJS-Retry-Elsewhere $peerserver_retry_elsewhere") in server_level
    socket = location(text, "~ /peerjs$")
    assert ("set", "$peerserver_retry_elsewhere 1") in socket
    assert ("proxy_pass", "http://peerserver_workers") in socket
    # A location with a proxy_set_header of its own would inherit none of the server's.
    assert not [d for d in socket if d[0] == "proxy_set_header"]
    # The worker's 503 (and nginx's 502 when every worker is out) go to the last try.
    assert ("proxy_intercept_errors", "on") in socket
    assert ("error_page", "502 503 = @socket_last_try") in socket
    last = location(text, "@socket_last_try")
    assert ("set", '$peerserver_retry_elsewhere ""') in last
    assert ("proxy_pass", "http://peerserver_last_try") in last
    assert ("proxy_read_timeout", "1h") in last and ("proxy_buffering", "off") in last
    # Pages and the API: nginx's own 502 (no live upstreams) gets a last try too.
    assert ("error_page", "502 = @last_try") in server_level
    # ... for what is safe to send twice: a POST may have reached a worker that failed.
    last = re.search(r"location @last_try \{\s*if \(\$request_method !~ \^\(GET\|HEAD\)\$\) \{\s*return 502;\s*\}"
                     r"\s*proxy_pass http://peerserver_last_try;\s*\}", text)
    assert last
    assert re.search(r"upstream peerserver_last_try \{\s*least_conn;\s*\$\{PEERSERVER_LAST_TRY_UPSTREAMS\}\s*\}", text)


def tls_directives(env, variable="PEERSERVER_TLS"):
    """``variable`` as deploy/nginx/tls.envsh makes it from ``env`` (sourced by sh, as both users do)."""
    result = subprocess.run(
        ["sh", "-c", f'. "$0" && printf %s "${variable}"', str(TLS_ENVSH)],
        env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=30,
    )
    return result


def render_like_the_official_image(template, env):
    """What nginx:1.27's entrypoint makes of ``template``: the *.envsh files
    sourced first (ours sets PEERSERVER_TLS), then 20-envsubst-on-templates.sh's
    envsubst limited to the defined variables matching NGINX_ENVSUBST_FILTER."""
    tls, ipv6 = tls_directives(env), tls_directives(env, "PEERSERVER_IPV6")
    assert tls.returncode == 0, tls.stderr
    env = {**env, "PEERSERVER_TLS": tls.stdout, "PEERSERVER_IPV6": ipv6.stdout}
    pattern = re.compile(env.get("NGINX_ENVSUBST_FILTER", ""))
    defined = {name: value for name, value in env.items() if pattern.search(name)}

    def substitute(match):
        name = match.group(1) or match.group(2)
        return defined[name] if name in defined else match.group(0)

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, template)


def render_like_cluster_sh(tmp_path, port, upstreams, **env):
    prefix = tmp_path / "nginx"
    subprocess.run(
        [str(CLUSTER), "--render-nginx", str(prefix)],
        env={**os.environ, "PORT": str(port), "UPSTREAMS": upstreams, **env},
        check=True,
        timeout=30,
    )
    return prefix


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    from tests.servers import Certificates

    return Certificates(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_compose_and_cluster_sh_render_the_template_alike(services, tmp_path, certificates, https):
    env = environment(services["nginx"], {**OPERATOR_ENV, "DJANGO_HTTPS": "1" if https else "0"})
    # The filter is what keeps the rest of the container's environment out.
    assert env["NGINX_ENVSUBST_FILTER"] == "^PEERSERVER_"
    # In the container the files are at tls.envsh's default paths; here they
    # are where the test made them.
    tls_files = {"PEERSERVER_TLS_CERT": str(certificates.cert), "PEERSERVER_TLS_KEY": str(certificates.key)}
    noisy_env = {**env, **tls_files, "HOSTNAME": "abc", "host": "clobbered", "scheme": "clobbered"}
    in_compose = render_like_the_official_image(TEMPLATE.read_text(), noisy_env)
    prefix = render_like_cluster_sh(
        tmp_path, env["PEERSERVER_PORT"], env["PEERSERVER_UPSTREAMS"],
        ACCESS_LOG=env["PEERSERVER_ACCESS_LOG"],
        **({"TLS_CERT": str(certificates.cert), "TLS_KEY": str(certificates.key), "TLS_PORT": env["PEERSERVER_TLS_PORT"]}
           if https else {}),
    )
    assert (prefix / "peerserver.conf").read_text().strip() == in_compose.strip()
    assert "clobbered" not in in_compose
    assert ("listen 8443 ssl;" in in_compose) == https
    # Both families where the machine has IPv6 (this one has).
    assert "listen [::]:8080;" in in_compose
    assert ("listen [::]:8443 ssl;" in in_compose) == https
    assert ("return 301 https://$host:8443$request_uri;" in in_compose) == https


def test_tls_envsh_names_a_missing_certificate(tmp_path):
    result = tls_directives({"PEERSERVER_HTTPS": "1", "PEERSERVER_TLS_CERT": str(tmp_path / "nope.pem"),
                             "PEERSERVER_TLS_KEY": str(tmp_path / "nope-key.pem")})
    assert result.returncode != 0
    assert "nope.pem" in result.stderr
    # And compose's default place is the mounted deploy/tls/.
    result = tls_directives({"PEERSERVER_HTTPS": "on"})
    assert result.returncode != 0 and "/etc/nginx/tls/cert.pem" in result.stderr


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
def test_rendered_config_passes_nginx_t(tmp_path, certificates, https):
    assert Path(NGINX).is_file(), "nginx is missing: apt-get install nginx-light"
    tls = {"TLS_CERT": str(certificates.cert), "TLS_KEY": str(certificates.key)} if https else {}
    prefix = render_like_cluster_sh(
        tmp_path, 8080, "server 127.0.0.1:8001; server 127.0.0.1:8002;", **tls
    )
    conf = (prefix / "peerserver.conf").read_text()
    assert "server 127.0.0.1:8001; server 127.0.0.1:8002;" in conf
    assert "server 127.0.0.1:8001 max_fails=0; server 127.0.0.1:8002 max_fails=0;" in conf
    assert "listen 8080;" in conf
    assert f"access_log {prefix}/logs/access.log peerserver;" in conf
    # Prometheus reads /metrics from each worker; nginx keeps it from the public.
    assert re.search(r"location = /metrics \{\s*return 404;\s*\}", conf)
    result = subprocess.run(
        [NGINX, "-t", "-e", "stderr", "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# --- Prometheus ------------------------------------------------------------------------


def compose_workers(services):
    """Every PeerServer worker in the compose file: the image's services that run the server
    (the migrate job runs a command instead)."""
    image = services["worker1"]["image"]
    return sorted(name for name, s in services.items() if s.get("image") == image and "command" not in s)


def promtool(*args):
    assert shutil.which("promtool"), "promtool is missing: ./scripts/setup.sh --test installs it (Debian: prometheus)"
    return subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)


def test_prometheus_scrapes_every_worker_directly(services):
    prometheus = services["prometheus"]
    # A pinned release, not whatever "latest" is on the day of the pull.
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"])
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    # Each worker by its own name, every one of them, nothing else: through
    # nginx a scrape would reach some worker at random.
    assert sorted(targets) == [f"{name}:8000" for name in compose_workers(services)]
    assert compose_workers(services) == WORKERS
    for name in WORKERS:
        assert "8000" in [str(port) for port in services[name]["expose"]]


@pytest.mark.parametrize("subnet", [None, "10.77.0.0/16"], ids=["default", "PEERSERVER_SUBNET"])
def test_workers_let_the_compose_network_read_metrics(compose, services, subnet):
    from signaling import conf

    operator_env = {**OPERATOR_ENV, **({"PEERSERVER_SUBNET": subnet} if subnet else {})}
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    network = ipaddress.ip_network(interpolate(pool["subnet"], operator_env))
    assert subnet is None or network == ipaddress.ip_network(subnet)
    for name in WORKERS:
        allow = environment(services[name], operator_env)["PEERJS_METRICS_ALLOW"]
        o = conf._validated(conf.from_environ({"PEERJS_METRICS_ALLOW": allow}))
        # A container on the network (Prometheus), the worker itself, and no one else.
        assert o.metrics_address_allowed(str(network[10]))
        assert o.metrics_address_allowed("127.0.0.1")
        assert not o.metrics_address_allowed("192.0.2.7")


def test_prometheus_config_passes_promtool():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # The example alerts are loaded with it (and checked by the same command).
    assert "1 rule files found" in result.stdout
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]


def test_the_docs_scrape_config_is_valid(tmp_path):
    doc = (ROOT / "docs" / "operations.md").read_text()
    (snippet,) = re.findall(r"A Prometheus elsewhere.*?```yaml\n(.*?)```", doc, re.DOTALL)
    token = tmp_path / "token"
    token.write_text("t" * 40)
    config = yaml.safe_load(snippet)
    config["scrape_configs"][0]["authorization"]["credentials_file"] = str(token)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_alerts_pass_promtool_and_fire_when_they_should():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    # alerts.test.yml: a worker down for a minute and a worker's database
    # errors fire their alerts; a healthy worker fires none.
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"PeerServerWorkerDown", "PeerServerDatabaseErrors", "PeerServerInboxFull", "PeerServerSlowConsumers"} <= names
    # They select the job prometheus.yml scrapes.
    job = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]["job_name"]
    for group in rules["groups"]:
        for rule in group["rules"]:
            for selected in re.findall(r'job="([^"]*)"', rule["expr"]):
                assert selected == job


# --- the image -----------------------------------------------------------------------


def dockerfile_instructions():
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_dockerfile_builds_a_non_root_worker_image():
    lines = dockerfile_instructions()
    froms = [line.split()[1] for line in lines if line.upper().startswith("FROM ")]
    assert froms[-1] == "python:3.11-slim"
    final = lines[max(i for i, line in enumerate(lines) if line.upper().startswith("FROM ")):]
    text = "\n".join(final)
    assert "pip install -r requirements.txt" in text
    assert "collectstatic --noinput" in text
    assert "EXPOSE 8000" in final
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    assert "deploy/worker-entrypoint.sh" in text
    # The PeerJS client from package-lock.json, served as static vendor/peerjs/.
    assert "node_modules/peerjs/dist" in "\n".join(lines)
    assert "npm ci" in "\n".join(lines)


def test_dockerfile_health_check_asks_for_readiness():
    lines = dockerfile_instructions()
    checks = [line for line in lines if line.upper().startswith("HEALTHCHECK ")]
    assert len(checks) == 1
    assert 'CMD ["python", "/app/deploy/healthcheck.py"]' in checks[0]


def test_dockerignore_keeps_local_state_out_of_the_image():
    ignored = (ROOT / ".dockerignore").read_text().split()
    # deploy/tls/ holds private keys: mounted into nginx, never in an image.
    for entry in [".git", ".venv/", "node_modules/", "staticfiles/", "deploy/tls/"]:
        assert entry in ignored


@pytest.fixture
def stand_in_servers(tmp_path):
    """daphne (run as python -m signaling.servers.daphne) and uvicorn that print how they were called, first on PATH."""
    for name in ["python", "uvicorn"]:
        fake = tmp_path / name
        fake.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        fake.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}


# What daphne binds with ASGI_HOST unset: "::" (both families) where the machine has IPv6.
ANY_ADDRESS = "::" if Path("/proc/net/if_inet6").exists() else "0.0.0.0"


def run_entrypoint(env, *args):
    return subprocess.run(
        [str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30
    )


def test_entrypoint_starts_uvicorn_by_default(stand_in_servers):
    # The faster server in the benchmark (docs/performance.md).
    env = {k: v for k, v in stand_in_servers.items() if not k.startswith("ASGI_")}
    words = run_entrypoint(env).stdout.split()
    assert words[:2] == ["uvicorn", "p2psite.asgi:application"]
    assert words[words.index("--port") + 1] == "8000"


def test_entrypoint_switches_to_daphne(stand_in_servers):
    env = {**stand_in_servers, "ASGI_SERVER": "daphne"}
    # Both families where the machine has IPv6: one dual-stack socket (tests/test_ipv6_clients.py).
    assert run_entrypoint(env).stdout.split() == [
        "python", "-m", "signaling.servers.daphne", "-b", ANY_ADDRESS, "-p", "8000", "p2psite.asgi:application",
    ]
    assert run_entrypoint({**env, "ASGI_HOST": "127.0.0.1"}).stdout.split()[3:5] == ["-b", "127.0.0.1"]


def test_entrypoint_switches_to_uvicorn(stand_in_servers):
    env = {**stand_in_servers, "ASGI_SERVER": "uvicorn", "ASGI_HOST": "127.0.0.1", "ASGI_PORT": "8001"}
    words = run_entrypoint(env).stdout.split()
    assert words[:2] == ["uvicorn", "p2psite.asgi:application"]
    assert words[words.index("--host") + 1] == "127.0.0.1"
    assert words[words.index("--port") + 1] == "8001"
    # uvicorn's protocols as signaling/servers/uvicorn.py adapts them.
    assert words[words.index("--http") + 1] == "signaling.servers.uvicorn:HTTPProtocol"
    assert words[words.index("--ws") + 1] == "signaling.servers.uvicorn:WebSocketProtocol"
    assert words[words.index("--ws-per-message-deflate") + 1] == "false"  # memory per idle peer
    assert words[words.index("--ws-ping-interval") + 1] == "0"  # no timer per socket: the hub's liveness sweep
    assert words[words.index("--lifespan") + 1] == "on"  # the hub starts with the worker


def test_entrypoint_never_lets_uvicorn_rewrite_the_client_address(stand_in_servers):
    # uvicorn's default would trust X-Forwarded-For from 127.0.0.1 and hide the
    # connection's address; the app decides whose header to believe
    # (PEERJS_TRUSTED_PROXIES, tests/test_proxy_headers.py).
    for proxied in [None, "0", "1"]:
        env = {k: v for k, v in stand_in_servers.items() if k != "PEERJS_PROXIED"}
        if proxied is not None:
            env["PEERJS_PROXIED"] = proxied
        words = run_entrypoint({**env, "PEERJS_TRUSTED_PROXIES": "*"}).stdout.split()
        assert "--no-proxy-headers" in words and "--proxy-headers" not in words
        assert "--forwarded-allow-ips" not in words


def test_entrypoint_serves_tls_itself_when_given_a_certificate(stand_in_servers):
    # tests/test_tls_worker.py serves real HTTPS this way; here, the exact
    # arguments, with paths a Twisted endpoint string must escape.
    env = {**stand_in_servers, "ASGI_TLS_CERT": "/tls/a:b/cert.pem", "ASGI_TLS_KEY": "/tls/key=1.pem"}
    words = run_entrypoint({**env, "ASGI_SERVER": "uvicorn"}).stdout.split()
    assert words[words.index("--ssl-certfile") + 1] == "/tls/a:b/cert.pem"
    assert words[words.index("--ssl-keyfile") + 1] == "/tls/key=1.pem"
    words = run_entrypoint({**env, "ASGI_SERVER": "daphne"}).stdout.split()
    assert words == [
        "python", "-m", "signaling.servers.daphne",
        "-e", "ssl:8000:interface=" + ANY_ADDRESS.replace(":", "\\:") + r":privateKey=/tls/key\=1.pem:certKey=/tls/a\:b/cert.pem",
        "p2psite.asgi:application",
    ]


def test_entrypoint_refuses_half_a_tls_setup(stand_in_servers):
    result = run_entrypoint({**stand_in_servers, "ASGI_TLS_CERT": "/tls/cert.pem"})
    assert result.returncode != 0 and result.stdout == ""
    assert "ASGI_TLS_KEY" in result.stderr


def test_entrypoint_refuses_an_unknown_server(stand_in_servers):
    result = run_entrypoint({**stand_in_servers, "ASGI_SERVER": "gunicorn"})
    assert result.returncode != 0
    assert "gunicorn" in result.stderr and result.stdout == ""


def test_entrypoint_runs_a_given_command_instead(stand_in_servers):
    result = run_entrypoint(stand_in_servers, "echo", "migrating")
    assert result.stdout.strip() == "migrating"



# --- the secrets ----------------------------------------------------------------------


def make_secrets(directory, *args, **env):
    """deploy/make_secrets.py run as the secrets service runs it, with ``env`` as the operator's."""
    clean = {k: v for k, v in os.environ.items() if k not in OPERATOR_ENV}
    return subprocess.run(
        [sys.executable, str(MAKE_SECRETS), *args, str(directory)], env={**clean, **env},
        capture_output=True, text=True, timeout=30,
    )


def read_secrets(directory):
    return {path.name: path.read_text() for path in sorted(directory.iterdir())}


def test_the_secrets_are_made_once_kept_and_replaced_by_the_operator_s(tmp_path):
    made = make_secrets(tmp_path / "secrets")
    assert made.returncode == 0, made.stderr
    first = read_secrets(tmp_path / "secrets")
    assert set(first) == {"django_secret_key", "turn_secret", "turnserver.conf", "postgres_password", "pgpass"}
    assert len(first["django_secret_key"]) >= 50 and len(first["turn_secret"]) >= 32 and len(first["postgres_password"]) >= 24
    assert first["turnserver.conf"] == f"static-auth-secret={first['turn_secret']}\n"
    assert first["pgpass"] == f"*:*:*:*:{first['postgres_password']}\n"
    # Never printed: what it says is where each value came from.
    assert made.stdout.strip() == (
        f"secrets in {tmp_path / 'secrets'}: DJANGO_SECRET_KEY generated, TURN_SECRET generated, POSTGRES_PASSWORD generated"
    )
    for value in first.values():
        assert value.strip() not in made.stdout + made.stderr
    for path in (tmp_path / "secrets").iterdir():
        assert path.stat().st_mode & 0o777 == 0o400, path

    # The next start keeps them...
    again = make_secrets(tmp_path / "secrets")
    assert again.returncode == 0 and "DJANGO_SECRET_KEY kept, TURN_SECRET kept, POSTGRES_PASSWORD kept" in again.stdout
    assert read_secrets(tmp_path / "secrets") == first
    # ... and an operator's value replaces the kept one, and is not printed either.
    chosen = make_secrets(tmp_path / "secrets", TURN_SECRET=OPERATOR_ENV["TURN_SECRET"])
    assert "TURN_SECRET from the environment" in chosen.stdout and OPERATOR_ENV["TURN_SECRET"] not in chosen.stdout
    after = read_secrets(tmp_path / "secrets")
    assert after["turn_secret"] == OPERATOR_ENV["TURN_SECRET"]
    assert after["turnserver.conf"] == f"static-auth-secret={OPERATOR_ENV['TURN_SECRET']}\n"
    assert after["django_secret_key"] == first["django_secret_key"]


def test_the_secrets_belong_to_the_workers_user(tmp_path):
    # As root (the secrets service's user), for the user the files are for;
    # the compose file names the image's "peerserver", this machine has "nobody".
    assert os.geteuid() == 0
    made = make_secrets(tmp_path / "secrets", "--owner", "nobody")
    assert made.returncode == 0, made.stderr
    for path in (tmp_path / "secrets").iterdir():
        assert (path.stat().st_uid, path.stat().st_mode & 0o777) == (pwd.getpwnam("nobody").pw_uid, 0o400), path


def test_a_secret_that_would_break_a_config_line_is_refused(tmp_path):
    made = make_secrets(tmp_path / "secrets", TURN_SECRET="first\nsecond-line")
    assert made.returncode != 0
    assert "TURN_SECRET must be printable ASCII without spaces" in made.stderr and "second-line" not in made.stderr


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The secrets a first `docker compose up` makes, in a directory of this machine."""
    directory = tmp_path_factory.mktemp("compose") / "secrets"
    made = make_secrets(directory)
    assert made.returncode == 0, made.stderr
    return directory


def on_this_machine(env, generated):
    """A service's environment with the secrets volume where the test made it."""
    return {name: value.replace(SECRETS_DIR, str(generated)) for name, value in env.items()}


def test_migrate_and_createsuperuser_reach_postgresql_with_the_generated_password(services, generated, tmp_path):
    """PostgreSQL created as the postgres image does it from POSTGRES_PASSWORD_FILE (password
    authentication only); the migrate service's environment, untouched but for the database's
    address, then migrates, and the admin user is made as docs/cluster.md says."""
    initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1]
    # Outside pytest's private tmp_path: the server runs as postgres.
    data = Path(tempfile.mkdtemp(prefix="peerjs-compose-pg-"))
    shutil.chown(data, "postgres")
    password_file = data / "password"
    shutil.copy(generated / "postgres_password", password_file)
    shutil.chown(password_file, "postgres")
    postgres = environment(services["postgres"])
    user, database = postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]

    def as_postgres(*command):
        result = subprocess.run(command, user="postgres", cwd=data, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr

    as_postgres(str(initdb), "-D", str(data / "data"), "-U", user, "--pwfile", str(password_file),
                "--auth=scram-sha-256", "--no-sync")
    port = free_port()
    as_postgres(str(initdb.parent / "pg_ctl"), "-D", str(data / "data"), "-l", str(data / "log"), "-w", "start",
                "-o", f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data} -c fsync=off")
    try:
        env = on_this_machine(environment(services["migrate"]), generated)
        env["DATABASE_URL"] = env["DATABASE_URL"].replace("@postgres:5432/", f"@127.0.0.1:{port}/")
        run_env = {"PATH": os.environ["PATH"], **env}
        # The database of the postgres image's POSTGRES_DB, made with the password too.
        admin = subprocess.run(
            [sys.executable, "-c", "import psycopg, sys; psycopg.connect(sys.argv[1], autocommit=True).execute(sys.argv[2])",
             env["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres", f'CREATE DATABASE "{database}"'],
            env=run_env, capture_output=True, text=True, timeout=60,
        )
        assert admin.returncode == 0, admin.stderr
        migrate = subprocess.run(
            [sys.executable, *command_text(services["migrate"]).split()[1:]], cwd=ROOT, env=run_env,
            capture_output=True, text=True, timeout=120,
        )
        assert migrate.returncode == 0, migrate.stderr
        superuser = subprocess.run(
            [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "stagemanager", "--email", "sm@example.com"],
            cwd=ROOT, env={**run_env, "DJANGO_SUPERUSER_PASSWORD": "stage-manager-pw-7"},
            capture_output=True, text=True, timeout=60,
        )
        assert superuser.returncode == 0, superuser.stderr
        # Without the file, the same environment is refused: the password is the generated one.
        refused = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--check"], cwd=ROOT,
            env={**run_env, "PGPASSFILE": str(tmp_path / "none")}, capture_output=True, text=True, timeout=60,
        )
        assert refused.returncode != 0 and "password" in refused.stderr
    finally:
        as_postgres(str(initdb.parent / "pg_ctl"), "-D", str(data / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(data, ignore_errors=True)


# --- coturn ----------------------------------------------------------------------------


def coturn_flags(services, operator_env={}):
    return [interpolate(str(arg), operator_env) for arg in services["coturn"]["command"]]


def coturn_here(services, generated, port, *extra):
    """The compose file's coturn command for this machine: the generated secret, a free port,
    listening and relaying on loopback, and ``extra`` flags."""
    flags = [f for f in coturn_flags(services) if not f.startswith("--listening-port=")]
    flags[flags.index("-c") + 1] = flags[flags.index("-c") + 1].replace(SECRETS_DIR, str(generated))
    return ["turnserver", *flags, f"--listening-port={port}", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", *extra]


def test_coturn_is_a_pinned_image_on_the_hosts_network(services):
    coturn = services["coturn"]
    image, tag = coturn["image"].split(":")
    assert image == "coturn/coturn" and re.fullmatch(r"\d+\.\d+\.\d+(-r\d+)?", tag)
    assert coturn["network_mode"] == "host"  # relays need a range of UDP ports
    assert coturn["restart"] == "unless-stopped"
    # It reads its secret as root, and serves as nobody.
    assert coturn["user"] == "root"
    flags = coturn_flags(services)
    assert "--proc-user=nobody" in flags and "--proc-group=nogroup" in flags


def test_coturn_reads_the_secret_the_workers_use_from_a_file(services):
    flags = coturn_flags(services)
    assert "--use-auth-secret" in flags and "-n" not in flags
    assert flags[flags.index("-c") + 1] == f"{SECRETS_DIR}/turnserver.conf"
    # Not on its command line, where `ps` and `docker inspect` show it.
    assert not [f for f in flags if "secret=" in f]
    port = next(f.split("=")[1] for f in flags if f.startswith("--listening-port="))
    for name in WORKERS:
        env = environment(services[name])
        assert env["PEERJS_TURN_SECRET_FILE"] == f"{SECRETS_DIR}/turn_secret"
        assert all(url.split("?")[0].endswith(f":{port}") for url in env["PEERJS_TURN_URLS"].split(","))


def denied_ranges(flags):
    """The (first, last) addresses of every --denied-peer-ip."""
    ranges = []
    for flag in flags:
        if flag.startswith("--denied-peer-ip="):
            first, _, last = flag.split("=", 1)[1].partition("-")
            ranges.append((ipaddress.ip_address(first), ipaddress.ip_address(last or first)))
    return ranges


def denied(ranges, address):
    address = ipaddress.ip_address(address)
    return any(first.version == address.version and first <= address <= last for first, last in ranges)


# Every range a relay must not reach: the private, shared, loopback, link-local,
# multicast and reserved ranges of IANA's special-purpose registries, and the
# IPv6 forms that carry an IPv4 address.
NOT_PUBLIC = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
    "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/32",
    "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8",
]
PUBLIC = [
    "1.1.1.1", "8.8.8.8", "9.255.255.255", "11.0.0.0", "100.63.255.255", "100.128.0.0", "172.15.255.255",
    "172.32.0.0", "192.167.255.255", "192.169.0.0", "198.17.255.255", "198.20.0.0", "223.255.255.255",
    "2001:4860:4860::8888", "2606:4700:4700::1111", "2a00:1450::1", "2003::1",
]


def test_coturn_denies_every_range_that_is_not_public_and_nothing_else(services):
    ranges = denied_ranges(coturn_flags(services))
    for network in map(ipaddress.ip_network, NOT_PUBLIC):
        assert denied(ranges, network[0]) and denied(ranges, network[-1]), network
    for address in PUBLIC:
        assert ipaddress.ip_address(address).is_global, address
        assert not denied(ranges, address), address
    flags = coturn_flags(services)
    assert "--no-tcp-relay" in flags and "--no-multicast-peers" in flags
    assert not [f for f in flags if f.startswith(("--allow-loopback-peers", "--allowed-peer-ip"))]
    # coturn reads ranges, not CIDR (a /8 would be taken for no range at all).
    assert not [f for f in flags if f.startswith("--denied-peer-ip=") and "/" in f]


def docs_turnserver_command():
    doc = (ROOT / "docs" / "apps.md").read_text()
    (block,) = re.findall(r"```sh\n(turnserver .*?)```", doc, re.DOTALL)
    return block.replace("\\\n", " ").split("\n")[0].split()


def test_the_docs_turnserver_line_denies_the_same_ranges():
    words = docs_turnserver_command()
    def key(pair):
        return pair[0].version, pair[0]

    in_compose = denied_ranges(coturn_flags(yaml.safe_load(COMPOSE.read_text())["services"]))
    assert sorted(denied_ranges(words), key=key) == sorted(in_compose, key=key)
    assert "--no-tcp-relay" in words and "--no-multicast-peers" in words


def test_the_compose_coturn_command_accepts_the_workers_credentials(services, generated, tmp_path):
    """The file's coturn flags, given to the real turnserver (on loopback, free ports), allocate
    relays with credentials the workers make from their PEERJS_TURN_* settings."""
    port = free_udp_and_tcp_port()
    command = coturn_here(
        services, generated, port,
        # The two test clients are on loopback: opened on purpose, as the compose file says
        # (coturn refuses loopback peers on its own as well, unless told).
        "--allowed-peer-ip=127.0.0.1", "--allow-loopback-peers",
        f"--pidfile={tmp_path / 'turnserver.pid'}", f"--db={tmp_path / 'turndb'}",
    )
    log = open(tmp_path / "turnserver.log", "wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        def listening():
            assert proc.poll() is None, (tmp_path / "turnserver.log").read_text()
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 15, "the compose file's coturn")
        # The worker's settings, read from the environment compose gives it.
        env = on_this_machine(environment(services["worker1"]), generated)
        options = conf.from_environ(env)
        urls = tuple(url.replace("localhost:3478", f"127.0.0.1:{port}") for url in options["TURN_URLS"])
        app = AppSettings(
            key="peerjs", name="compose", origins=(), concurrent_limit=1, allow_discovery=False, auth="none",
            token_secret="", turn_urls=urls, turn_secret=options["TURN_SECRET"], turn_ttl=600,
            webhook_url="", webhook_secret="",
        )
        entry = next(s for s in turn.credentials(app, "compose")["iceServers"] if "username" in s)
        result = subprocess.run(
            ["turnutils_uclient", "-n", "1", "-u", entry["username"], "-w", entry["credential"], "-p", str(port), "-y", "127.0.0.1"],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stdout[-2000:] + (tmp_path / "turnserver.log").read_text()[-2000:]
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


class Namespace:
    """A private network namespace (unshare -n): only its own loopback, holding ``addresses``.
    Whatever is sent there reaches no other network (TESTING.md)."""

    def __init__(self, addresses):
        # It says when it is in its namespace: entered before that, nsenter
        # would configure this machine's loopback instead (seen on a slow run).
        self.holder = subprocess.Popen(
            ["unshare", "-n", "sh", "-c", "echo in; exec sleep 600"], stdout=subprocess.PIPE, text=True,
        )
        assert self.holder.stdout.readline() == "in\n"
        self.run("ip", "link", "set", "lo", "up")
        for address in addresses:
            self.run("ip", "addr", "add", f"{address}/{128 if ':' in address else 32}", "dev", "lo")

    def command(self, *args):
        return ["nsenter", "-t", str(self.holder.pid), "-n", *args]

    def run(self, *args, check=True):
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=60, check=check)

    def close(self):
        self.holder.kill()
        self.holder.wait()


# In the namespace, one address of each kind of range, and one opened on purpose.
PEERS_DENIED = ["10.9.9.9", "172.20.0.5", "192.168.7.7", "169.254.169.254", "100.64.0.9", "fd00::5"]
PEER_ALLOWED = "10.1.2.3"


def test_coturn_refuses_to_relay_into_private_networks_unless_one_is_opened(services, generated, tmp_path):
    """The compose file's coturn, in a namespace where private addresses answer: an
    allocation works, but a permission for a peer in a denied range is refused (403), while
    the one range opened with --allowed-peer-ip, as the compose file says, is relayed to."""
    namespace = Namespace([*PEERS_DENIED, PEER_ALLOWED])
    logs = []
    try:
        peer = subprocess.Popen(
            namespace.command("turnutils_peer", "-p", "3480", *[f"-L{a}" for a in [*PEERS_DENIED, PEER_ALLOWED]]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        logs.append(peer)
        log_path = tmp_path / "turnserver.log"
        log = open(log_path, "wb")
        coturn = subprocess.Popen(
            namespace.command(*coturn_here(
                services, generated, 3478, "--relay-ip=::1", f"--allowed-peer-ip={PEER_ALLOWED}",
                f"--pidfile={tmp_path / 'turnserver.pid'}", f"--db={tmp_path / 'turndb'}",
            )),
            stdout=log, stderr=subprocess.STDOUT,
        )
        logs.append(coturn)

        def listening():
            assert coturn.poll() is None, log_path.read_text()
            probe = namespace.run(sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 3478), 1)", check=False)
            return probe.returncode == 0

        try:
            wait_until(listening, 30, "coturn in the namespace")
        except TimeoutError:
            raise AssertionError(log_path.read_text()) from None
        secret = (generated / "turn_secret").read_text()
        app = AppSettings(
            key="peerjs", name="compose", origins=(), concurrent_limit=1, allow_discovery=False, auth="none",
            token_secret="", turn_urls=("turn:127.0.0.1:3478",), turn_secret=secret, turn_ttl=600,
            webhook_url="", webhook_secret="",
        )
        entry = next(s for s in turn.credentials(app, "probe")["iceServers"] if "username" in s)

        def relay(address):
            family = ["-x"] if ":" in address else []
            return namespace.run(
                "turnutils_uclient", "-n", "1", *family, "-e", address, "-r", "3480",
                "-u", entry["username"], "-w", entry["credential"], "-p", "3478", "127.0.0.1", check=False,
            )

        for address in PEERS_DENIED:
            result = relay(address)
            assert result.returncode != 0 and "403 (Forbidden IP)" in result.stdout, (address, result.stdout[-1000:])
            assert f"A peer IP {address} denied in the range" in log_path.read_text()
        result = relay(PEER_ALLOWED)
        assert result.returncode == 0, result.stdout[-2000:] + log_path.read_text()[-2000:]
    finally:
        for proc in logs:
            proc.terminate()
            proc.wait(15)
        namespace.close()
