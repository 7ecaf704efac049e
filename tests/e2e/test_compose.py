"""docker-compose.yml and the Dockerfile name only services, commands, options and settings that exist; the reverse
proxy in front of the API (deploy/nginx.conf) has its own limits on slow clients and on body size."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import api.__main__ as api_cli
from api.limits import body_limit
import worker.__main__ as worker_cli
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
CLI_PARSERS = {"api": api_cli.parse_args, "worker": worker_cli.parse_args}


# The object store's credentials, read by its client under their standard names (docs/http-api.md, where images live).
AWS_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}


def setting_names() -> set[str]:
    return {"REDIS_URL"} | AWS_NAMES | {"UPSCALER_" + name.upper() for name in Settings.model_fields}


def test_the_stack_has_redis_the_api_and_both_worker_pools():
    assert {"redis", "s3", "api", "worker", "worker-light"} <= set(SERVICES)


def test_images_live_in_the_s3_service_on_a_volume():
    s3 = SERVICES["s3"]
    volume = s3["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in COMPOSE["volumes"] and "-dir=/data" in s3["command"]
    port = next(arg for arg in s3["command"] if arg.startswith("-s3.port=")).split("=")[1]
    for name in ("api", "worker", "worker-light"):
        environment = SERVICES[name]["environment"]
        assert Settings(storage_url=environment["UPSCALER_STORAGE_URL"].split(":-")[1].rstrip("}")).storage_url
        assert environment["UPSCALER_S3_ENDPOINT_URL"].endswith(f"http://s3:{port}}}")
        assert SERVICES[name]["depends_on"]["s3"]["condition"] == "service_healthy"
        for required in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert ":?" in environment[required] and environment[required] == s3["environment"][required]


def test_redis_keeps_an_append_only_file_on_a_volume():
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    volume = redis["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in COMPOSE["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


@pytest.mark.parametrize("name", ["api", "worker", "worker-light"])
def test_commands_run_our_modules_with_options_they_accept(name):
    command = SERVICES[name]["command"]
    assert command[:2] == ["python", "-m"], command
    module = command[2]
    assert (ROOT / module / "__main__.py").is_file()
    CLI_PARSERS[module](command[3:])  # argparse exits on an unknown option or a bad value


@pytest.mark.parametrize("name", ["api", "worker", "worker-light"])
def test_environment_names_only_real_settings(name):
    environment = SERVICES[name]["environment"]
    unknown = set(environment) - setting_names()
    assert not unknown, f"{name} sets variables no setting reads: {unknown}"
    assert environment["REDIS_URL"].startswith("redis://redis:")
    for required in ("UPSCALER_API_KEYS", "UPSCALER_WEBHOOK_SECRET"):
        assert ":?" in environment[required], "outside local mode these must be set, not defaulted"


def test_gpu_workers_reserve_an_nvidia_gpu_and_scale():
    worker = SERVICES["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "container_name" not in worker, "a fixed container name prevents --scale worker=N"
    assert worker_cli.parse_args(worker["command"][3:]).queues == ["gpu"]
    assert worker_cli.parse_args(SERVICES["worker-light"]["command"][3:]).queues == ["light"]


@pytest.mark.parametrize("name", ["redis", "s3", "api", "worker", "worker-light"])
def test_every_service_has_a_healthcheck_that_names_real_commands(name):
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[0] == "CMD"
    if test[1:3] == ["python", "-m"]:
        CLI_PARSERS[test[3]](test[4:])
    if name not in ("redis", "s3"):
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_api_listens_on_all_interfaces_behind_the_proxy():
    api = SERVICES["api"]
    assert api["environment"]["UPSCALER_HOST"] == "0.0.0.0"
    assert "ports" not in api, "published, the API could be reached around the proxy and its limits"
    assert api["expose"] == [api["environment"]["UPSCALER_PORT"]]
    # it believes the proxy's X-Forwarded-For (failed authentications are counted per client address)
    assert api["environment"]["UPSCALER_FORWARDED_ALLOW_IPS"]


PROXY = SERVICES["proxy"]
NGINX_CONF = next((ROOT / source).read_text() for source, target, *_ in (v.split(":") for v in PROXY["volumes"])
                  if target == "/etc/nginx/conf.d/default.conf")


def nginx_directives(text: str) -> dict[str, list[str]]:
    """Each directive's arguments, by name (every occurrence), comments dropped."""
    found: dict[str, list[str]] = {}
    for statement in re.sub(r"#[^\n]*", "", text).replace("{", ";").replace("}", ";").split(";"):
        words = statement.split()
        if words:
            found.setdefault(words[0], []).append(" ".join(words[1:]))
    return found


def nginx_seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[unit]


def nginx_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG])?", value).groups()
    return int(number) * {None: 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit and unit.lower()]


def test_a_reverse_proxy_is_the_only_published_port_and_waits_for_a_healthy_api():
    assert PROXY["image"].startswith("nginx:")
    assert PROXY["ports"] == ["${UPSCALER_PUBLISH_PORT:-8000}:8080"]
    assert PROXY["depends_on"]["api"]["condition"] == "service_healthy"
    test = PROXY["healthcheck"]["test"]
    assert test[0] == "CMD" and test[-1].endswith("/healthz")
    assert [name for name, service in SERVICES.items() if "ports" in service] == ["proxy"]


def test_the_proxy_forwards_to_the_api_and_names_the_client():
    directives = nginx_directives(NGINX_CONF)
    assert directives["listen"] == ["8080"]
    upstream_servers = [value for value in directives["server"] if value]  # not the `server {` block
    assert upstream_servers == [f"api:{SERVICES['api']['environment']['UPSCALER_PORT']}"]
    assert directives["proxy_pass"] == ["http://upscaler_api"] and directives["upstream"] == ["upscaler_api"]
    headers = dict(value.split(None, 1) for value in directives["proxy_set_header"])
    # replaced with the peer's address: appended ($proxy_add_x_forwarded_for), a client could name its own
    assert headers["X-Forwarded-For"] == "$remote_addr"


def test_the_proxy_cuts_off_slow_clients():
    directives = nginx_directives(NGINX_CONF)
    for name, most in (("client_header_timeout", 30), ("client_body_timeout", 60), ("send_timeout", 60),
                       ("keepalive_timeout", 75)):
        assert 0 < nginx_seconds(directives[name][0]) <= most, name
    assert "off" not in directives.get("proxy_request_buffering", []), "the API would wait on slow uploads itself"


def test_the_proxys_body_limit_admits_the_apis_largest_body_and_little_more():
    default_upload = int(re.search(r":-(\d+)", COMPOSE["x-upscaler-env"]["UPSCALER_MAX_UPLOAD_BYTES"]).group(1))
    largest = body_limit(default_upload, "application/json")  # an image's base64 in JSON
    proxy_limit = nginx_bytes(nginx_directives(NGINX_CONF)["client_max_body_size"][0])
    assert largest <= proxy_limit <= largest * 1.1


def test_the_dockerfile_copies_existing_packages_and_runs_the_api():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        for path in source.split():
            assert (ROOT / path.rstrip("/")).exists(), path
    cmd = re.search(r'^CMD (\[.*\])', dockerfile, flags=re.M).group(1)
    assert yaml.safe_load(cmd) == ["python", "-m", "api"]
    assert "torch==2.13.0" in dockerfile  # the same pin as scripts/setup
    assert "pip install ." in dockerfile  # the package itself, from pyproject.toml
