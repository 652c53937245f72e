"""Headless Chromium for the browser tests: one browser, one context per machine.

Each "machine" is a separate browser context (its own storage, like a second
computer) with camera and microphone granted: on a loopback-only box Chromium
gathers no ICE candidates without that grant (see TESTING.md). Console
messages and page errors are recorded and printed when a test fails, because
the PeerJS client reports a server ERROR as a bare "Error".
"""
import pytest

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",
    "--disable-quic",
]
# Every wait in these tests is for a DOM state or an event; this bounds it.
# Generous: WebRTC connections open in a second here, but the suite runs in
# parallel processes on two cores, and a busy moment can take many times that.
TIMEOUT_MS = 30_000


def wait_for_async(page, predicate, arg=None, timeout=TIMEOUT_MS, interval=100):
    """Poll an async in-page predicate until its value is truthy or ``timeout`` ms pass; that value.

    For what only a Promise tells (getStats()): Page.wait_for_function takes
    the Promise an async predicate returns as truthy and ends at once, so it
    cannot wait for one. The loop runs in the page; its last value is returned
    for the test to assert.
    """
    return page.evaluate(
        f"""async (arg) => {{
            const predicate = {predicate};
            const deadline = Date.now() + {int(timeout)};
            for (;;) {{
                const value = await predicate(arg);
                if (value || Date.now() > deadline) return value;
                await new Promise((resolve) => setTimeout(resolve, {int(interval)}));
            }}
        }}""",
        arg,
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


# Package scope, not session: sync Playwright keeps an event loop running in
# the main thread while it is open, which would break every asyncio test that
# runs after the browser tests.
@pytest.fixture(scope="package")
def chromium():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Machine:
    """A browser context and its first page, with everything the page logged."""

    def __init__(self, browser, name, **context_options):
        self.name = name
        self.context = browser.new_context(**context_options)
        self.context.grant_permissions(["camera", "microphone"])
        self.context.set_default_timeout(TIMEOUT_MS)
        self.log = []
        self.requests = []
        self.context.on("request", lambda request: self.requests.append(request.url))
        self.page = self.new_page()

    def new_page(self):
        page = self.context.new_page()
        page.on("console", lambda msg: self.log.append(f"[{msg.type}] {msg.text}"))
        page.on("pageerror", lambda error: self.log.append(f"[pageerror] {error}"))
        return page

    def close(self):
        self.context.close()


@pytest.fixture
def machines(chromium, request):
    """Factory of machines; on failure every machine's console is printed."""
    made = []

    def make(name, **context_options):
        machine = Machine(chromium, name, **context_options)
        made.append(machine)
        return machine

    yield make
    failed = any(
        getattr(request.node, f"report_{when}", None) is not None
        and getattr(request.node, f"report_{when}").failed
        for when in ("setup", "call")
    )
    if failed:
        for machine in made:
            print(f"\n----- console of {machine.name} -----")
            print("\n".join(machine.log) or "(nothing)")
    for machine in made:
        machine.close()
    # An uncaught exception in a page is a bug even when the test's checks passed.
    errors = [f"{m.name}: {line}" for m in made for line in m.log if line.startswith("[pageerror]")]
    if errors and not failed:
        pytest.fail("uncaught errors in the pages:\n" + "\n".join(errors))
