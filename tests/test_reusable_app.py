"""The app leaves the repository: its wheel, what it holds and needs, and a site made from scratch that installs it.

The sites are generated with startproject in a fresh virtualenv (tests/reusable_site.py).
Served by uvicorn and used by the real PeerJS client in Chromium, beside a
consumer of the site's own: tests/browser/test_reusable_app_site.py.
"""
import re
import tomllib
import zipfile

import pytest

from signaling.servers import TESTED
from tests.reusable_site import SITE, FreshSite, readme_commands, readme_files
from tests.servers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SERVERS = {"uvicorn": ["uvicorn", "h11", "websockets"], "daphne": ["daphne", "twisted", "autobahn"]}


def pins(lines):
    """{lower-case name: version} of ``name==version`` (or ``name>=version,...``) requirements."""
    found = {}
    for line in lines:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(?:==|>=)\s*([^\s,;#]+)", line)
        if match:
            found[match[1].lower()] = match[2]
    return found


@pytest.mark.fast
def test_the_server_extras_pin_what_signaling_servers_was_tested_with():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, names in SERVERS.items():
        assert pins(extras[extra]) == {name: TESTED[name] for name in names}, extra
        assert all("==" in requirement for requirement in extras[extra]), extra
    assert set(SERVERS) == set(extras) and sorted(sum(SERVERS.values(), [])) == sorted(TESTED)


@pytest.mark.fast
def test_the_runtime_dependencies_start_at_the_versions_the_site_pins():
    """What the wheel asks for is what requirements.txt runs the tests with (the lowest version it allows)."""
    site = pins((ROOT / "requirements.txt").read_text().splitlines())
    wanted = pins(PYPROJECT["project"]["dependencies"])
    assert wanted and all(site.get(name) == version for name, version in wanted.items()), (wanted, site)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, request):
    site = FreshSite(tmp_path_factory.mktemp("fresh-site"), request.config.cache.mkdir("reusable-app"))
    yield site
    site.stop()


def test_the_wheel_holds_the_app_alone_with_its_migrations_templates_static_files_and_commands(fresh):
    names = zipfile.ZipFile(fresh.wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"signaling"}
    migrations = {name for name in names if re.fullmatch(r"signaling/migrations/\d{4}_\w+\.py", name)}
    assert len(migrations) == len(list((ROOT / "signaling" / "migrations").glob("0*.py"))) > 0
    for name in [
        "signaling/templates/admin/signaling/overview.html",
        "signaling/templates/admin/signaling/peer/ban_confirmation.html",
        "signaling/static/signaling/overview.js",
        "signaling/static/signaling/admin.css",
        "signaling/management/commands/mint_token.py",
        "signaling/management/commands/runserver.py",
        "signaling/servers/uvicorn.py",
        "signaling/asgi.py",
    ]:
        assert name in names, name


@pytest.mark.parametrize("alone", [False, True], ids=["beside-startproject-apps", "literally-alone"])
def test_with_channels_and_signaling_installed_check_and_migrate_pass_on_the_defaults(fresh, alone, tmp_path):
    """No PEERJS, no CHANNEL_LAYERS, no URLs: every option has a default."""
    site = fresh.startproject(tmp_path / "bare")
    settings = site / SITE / "settings.py"
    if alone:
        added = 'INSTALLED_APPS = ["channels", "signaling"]\nROOT_URLCONF = "signaling.urls"\n'
    else:
        added = 'INSTALLED_APPS += ["channels", "signaling"]\n'
    settings.write_text(settings.read_text() + added)
    assert "no issues" in fresh.manage("check", site=site)
    assert re.search(r"Applying signaling\.0001_initial\.\.\. OK", fresh.manage("migrate", "--noinput", site=site))
    assert "No changes detected" in fresh.manage("makemigrations", "--check", "--dry-run", site=site)


def test_every_module_of_the_app_imports_in_a_site_without_the_project(fresh):
    """The README's site, without p2psite or cuepages on its path: nothing of the app imports them.

    Except what needs the daphne extra, which this virtualenv lacks
    (signaling.servers.daphne stops with one line saying so).
    """
    fresh.follow_readme()
    script = """
import importlib, pkgutil, sys
import django
django.setup()
import signaling
needs_daphne = {"signaling.servers.daphne", "signaling.management.commands.runserver"}
names = [m.name for m in pkgutil.walk_packages(signaling.__path__, "signaling.") if m.name not in needs_daphne]
for name in names:
    importlib.import_module(name)
for site_module in ("p2psite", "cuepages"):
    try:
        importlib.import_module(site_module)
    except ImportError:
        pass
    else:
        sys.exit(f"{site_module} is importable")
print(len(names))
"""
    imported = fresh.manage("shell", "-c", script, DJANGO_SETTINGS_MODULE=f"{SITE}.settings")
    assert int(imported.split()[-1]) > 30
    assert "signaling.servers.daphne" not in readme_files()


def test_runserver_without_the_daphne_extra_says_what_to_install(fresh, tmp_path):
    """The app's runserver (daphne's, adapted) takes Django's place when signaling comes first; here daphne is absent."""
    site = fresh.startproject(tmp_path / "first")
    settings = site / SITE / "settings.py"
    settings.write_text(settings.read_text() + 'INSTALLED_APPS = ["signaling", "channels", *INSTALLED_APPS]\n')
    with pytest.raises(RuntimeError) as failed:
        fresh.manage("runserver", "--noreload", site=site)
    lines = str(failed.value).strip().splitlines()
    assert lines[-1].startswith("error: signaling.servers adapts daphne, twisted, autobahn"), lines
    assert lines[-1].endswith("pip install 'django-peerjs-signaling[daphne]')."), lines


@pytest.mark.fast
def test_the_readme_s_steps_are_the_ones_this_test_follows():
    """The section gives settings, urls and asgi.py, and migrate then uvicorn with the app's server classes."""
    assert sorted(readme_files()) == [f"{SITE}/asgi.py", f"{SITE}/settings.py", f"{SITE}/urls.py"]
    commands = readme_commands()
    install, migrate, serve = commands
    assert install[:2] == ["pip", "install"] and install[2].endswith("[uvicorn]")
    assert migrate == ["python", "manage.py", "migrate"]
    assert serve[:2] == ["uvicorn", f"{SITE}.asgi:application"]
    assert "signaling.servers.uvicorn:HTTPProtocol" in serve and "signaling.servers.uvicorn:WebSocketProtocol" in serve
