"""Environment for the test process, set before Django reads its settings.

Loaded as a plugin (``-p tests.environment`` in pytest.ini) because
pytest-django configures Django before any conftest.py is imported.
"""
import os

from tests.servers import TEST_SECRET_KEY

os.environ.setdefault("DJANGO_SECRET_KEY", TEST_SECRET_KEY)
os.environ.setdefault("DJANGO_DEBUG", "0")
# PEERJS_TEST_DATABASE_URL points the whole suite at another database
# (scripts/test.sh uses it for the PostgreSQL pass).
if os.environ.get("PEERJS_TEST_DATABASE_URL"):
    os.environ["DATABASE_URL"] = os.environ["PEERJS_TEST_DATABASE_URL"]
