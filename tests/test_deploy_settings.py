"""Settings for a deployment: the secret key, and DJANGO_HTTPS passing `check --deploy`.

Each case runs manage.py in a subprocess with exactly the environment an
operator would give it, as a worker starts.
"""
import os
import secrets
import subprocess
import sys

import pytest

from tests.servers import ROOT

A_GOOD_KEY = secrets.token_urlsafe(50)


def manage(*args, **variables):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PEERJS_"))}
    env.update({"DJANGO_DEBUG": "0", **variables})
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    "key",
    [
        "change-me-this-default-is-public",  # docker-compose.yml's old default
        "collectstatic-only-not-a-secret",  # the Dockerfile's old build key
        "insecure-development-key-only-used-with-DJANGO_DEBUG",  # the debug default
        "django-insecure-" + "k" * 20 + "0123456789abcdef",  # from `django-admin startproject`
        "peerserver-CHANGE-ME-before-you-deploy-this-cluster",
    ],
)
def test_a_published_placeholder_key_stops_start_up(key):
    result = manage("check", DJANGO_SECRET_KEY=key)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is a published placeholder" in result.stderr


@pytest.mark.parametrize("key", ["short", "x" * 31, "abab" * 20])
def test_a_weak_key_stops_start_up(key):
    result = manage("check", DJANGO_SECRET_KEY=key)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is too weak" in result.stderr


def test_a_random_key_starts():
    result = manage("check", DJANGO_SECRET_KEY=A_GOOD_KEY)
    assert result.returncode == 0, result.stderr


def test_debug_mode_needs_no_real_key():
    assert manage("check", DJANGO_DEBUG="1").returncode == 0
    assert manage("check", DJANGO_DEBUG="1", DJANGO_SECRET_KEY="short").returncode == 0


@pytest.mark.parametrize("proxied", ["1", "0"], ids=["behind-nginx", "worker-serves-tls"])
def test_check_deploy_is_clean_with_https_on(proxied):
    result = manage("check", "--deploy", "--fail-level", "WARNING",
                    DJANGO_SECRET_KEY=A_GOOD_KEY, DJANGO_HTTPS="1", PEERJS_PROXIED=proxied)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identified no issues" in result.stdout


def test_check_deploy_names_what_plain_http_lacks():
    # Proves the check above looks at something: without the switch, the
    # HTTPS settings are what check --deploy misses.
    result = manage("check", "--deploy", "--fail-level", "WARNING", DJANGO_SECRET_KEY=A_GOOD_KEY)
    assert result.returncode != 0
    for warning in ["security.W004", "security.W008", "security.W012", "security.W016"]:
        assert warning in result.stderr


def test_turning_hsts_off_is_reported():
    # Only the subdomain and preload parts are silenced: HSTS itself is not.
    result = manage("check", "--deploy", "--fail-level", "WARNING",
                    DJANGO_SECRET_KEY=A_GOOD_KEY, DJANGO_HTTPS="1", DJANGO_HSTS_SECONDS="0")
    assert result.returncode != 0 and "security.W004" in result.stderr


def test_a_key_in_a_file_named_by_the_file_variable_starts(tmp_path):
    # docker-compose.yml's workers get their secrets so (deploy/make_secrets.py).
    key_file = tmp_path / "django_secret_key"
    key_file.write_text(A_GOOD_KEY)
    result = manage("shell", "-c", "from django.conf import settings; print(settings.SECRET_KEY == open(%r).read())" % str(key_file),
                    DJANGO_SECRET_KEY_FILE=str(key_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("True")
    # The file's value is checked like any other.
    key_file.write_text("short")
    result = manage("check", DJANGO_SECRET_KEY_FILE=str(key_file))
    assert result.returncode != 0 and "DJANGO_SECRET_KEY is too weak" in result.stderr
    # A value given directly wins over the file.
    assert manage("check", DJANGO_SECRET_KEY_FILE=str(key_file), DJANGO_SECRET_KEY=A_GOOD_KEY).returncode == 0


def test_an_unreadable_secret_file_is_named(tmp_path):
    result = manage("check", DJANGO_SECRET_KEY_FILE=str(tmp_path / "missing"))
    assert result.returncode != 0
    assert f"DJANGO_SECRET_KEY_FILE='{tmp_path / 'missing'}' cannot be read: No such file or directory." in result.stderr
