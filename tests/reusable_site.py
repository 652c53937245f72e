"""The app as a new user gets it: its wheel, built here, in a fresh virtualenv beside a site made by startproject.

The site is set up as README.md's "Add it to your Django site" says: the
section's code blocks are what is written into the site and what is run, so
the README cannot drift from what works.

The virtualenv's dependencies come from a wheelhouse of requirements.txt's
pins, built once per version of that file and kept in pytest's cache: each
run installs from it with --no-index, so it downloads nothing and takes
seconds, while the wheel's own metadata (its dependencies and extras) still
decide what is installed. A virtualenv that saw the project's packages would
be quicker still, but would not show that the wheel names what it needs.
Nothing of the repository is on the site's path: p2psite and cuepages are
not there to import.
"""
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.servers import ROOT, LoopbackServer, free_port, terminate

README_SECTION = "## Add it to your Django site"
SITE = "mysite"
# pip with no configuration of this machine's (its extra indexes and
# find-links): the wheelhouse alone.
OFFLINE_PIP = {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def readme_blocks():
    """The fenced blocks of README.md's section, as (language, text)."""
    text = (ROOT / "README.md").read_text()
    start = text.index(README_SECTION)
    end = text.find("\n## ", start + len(README_SECTION))
    return re.findall(r"^```(\w+)\n(.*?)^```", text[start : end if end > 0 else None], re.S | re.M)


def readme_commands():
    """The shell commands of the section, as argument lists (continuation lines joined)."""
    commands = []
    for language, text in readme_blocks():
        if language == "sh":
            commands += [shlex.split(line) for line in text.replace("\\\n", " ").splitlines() if line.strip()]
    return commands


def readme_files():
    """{path in the site: text} of the section's Python blocks, each headed by a comment naming its file."""
    files = {}
    for language, text in readme_blocks():
        if language == "python":
            first, _, rest = text.partition("\n")
            files[re.match(r"# ([\w/]+\.py)", first)[1]] = rest
    return files


def _run(command, **kwargs):
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=300, **kwargs)
    if result.returncode:
        raise RuntimeError(f"{command} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result.stdout


def build_wheel(directory):
    """The app's wheel, built as ``pip wheel --no-deps .`` builds it, from a copy of what pyproject.toml reads.

    A copy, because a build leaves its files beside the sources. Without build
    isolation: the setuptools of requirements-test.txt builds it, offline.
    """
    source = directory / "source"
    shutil.copytree(ROOT / "signaling", source / "signaling", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", directory / "dist", source])
    (wheel,) = (directory / "dist").glob("*.whl")
    return wheel


def wheelhouse(cache):
    """Wheels of every pin of requirements.txt, built once per version of that file."""
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()[:16]
    house = cache / f"wheelhouse-{digest}"
    if not house.is_dir():
        for old in cache.glob("wheelhouse-*"):
            shutil.rmtree(old, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(dir=cache, prefix="partial-"))
        _run([sys.executable, "-m", "pip", "wheel", "-q", "-r", ROOT / "requirements.txt", "-w", partial])
        try:
            partial.rename(house)
        except OSError:  # another test process made it meanwhile
            shutil.rmtree(partial, ignore_errors=True)
    return house


def site_environment(**extra):
    """What the site's processes see: none of the test process's settings (DJANGO_SETTINGS_MODULE, PEERJS_*, REDIS_URL)."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"}
    return {**{k: v for k, v in os.environ.items() if k in keep}, "PYTHONUNBUFFERED": "1", **extra}


class FreshSite:
    """A virtualenv with the app's wheel and its ``extra``, and a site made in it by ``django-admin startproject``."""

    def __init__(self, directory, cache, extra="uvicorn"):
        self.dir = Path(directory)
        self.wheel = build_wheel(self.dir)
        venv = self.dir / "venv"
        _run([sys.executable, "-m", "venv", "--without-pip", venv])
        self.bin = venv / "bin"
        self.python = self.bin / "python"
        # The tests' pip installs into it (pip --python): it needs none of its own.
        _run(
            [sys.executable, "-m", "pip", "--python", self.python, "install", "-q", "--no-index",
             "--find-links", wheelhouse(cache), f"{self.wheel}[{extra}]"],
            env={**os.environ, **OFFLINE_PIP},
        )
        self.site = self.startproject(self.dir / "site")
        self.servers = []

    def startproject(self, directory):
        """A site as ``django-admin startproject mysite DIRECTORY`` makes it, in this virtualenv."""
        directory.mkdir()
        _run([self.bin / "django-admin", "startproject", SITE, directory])
        return directory

    def file(self, name):
        return self.site / name

    def follow_readme(self):
        """Write the README's blocks into the site: settings and urls extended, asgi.py's application replaced."""
        for name, text in readme_files().items():
            path = self.file(name)
            if name.endswith("asgi.py"):
                original = "application = get_asgi_application()\n"
                assert path.read_text().count(original) == 1
                path.write_text(path.read_text().replace(original, text))
            else:
                path.write_text(path.read_text() + "\n" + text)

    def run_readme_command(self, words, **env):
        """One of the README's commands (python, uvicorn) with this virtualenv's programs, in the site."""
        return _run([self.bin / words[0], *words[1:]], cwd=self.site, env=site_environment(**env))

    def manage(self, *args, site=None, **env):
        """``python manage.py ARGS`` in the site (or in another one of this virtualenv); its output."""
        return _run([self.python, "manage.py", *args], cwd=site or self.site, env=site_environment(**env))

    def serve(self, words, **env):
        """The README's uvicorn command on a free port; returns once the worker is ready (GET /readyz)."""
        worker = SiteWorker(self, words, env)
        self.servers.append(worker)
        return worker

    def stop(self):
        for worker in self.servers:
            worker.stop()


class SiteWorker(LoopbackServer):
    def __init__(self, site, words, env):
        assert words[0] == "uvicorn", words
        self.port = free_port()
        self.log_path = site.dir / f"uvicorn-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(site.bin / "uvicorn"), *words[1:], "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=site.site, env=site_environment(**env), stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.wait_answering("/readyz", 60, f"the site's uvicorn on port {self.port}")

    def output(self):
        return self.read_log()

    def read_log(self):
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        terminate(self.proc)
        self.log.close()
