"""The window sizes the pages are checked at, and where their screenshots go.

The docs' screenshots (docs/operations.md, docs/cuepages.md): PEERJS_SCREENSHOTS=docs/screenshots refreshes them;
by default they go to test-artifacts/ so a test run leaves the tree clean.
"""
import os
from pathlib import Path

# A laptop's and a desktop's common sizes, and a phone's.
VIEWPORTS = [(1024, 768), (1280, 800), (1440, 900), (390, 844)]
SCREENSHOTS = Path(__file__).resolve().parents[2] / os.environ.get("PEERJS_SCREENSHOTS", "test-artifacts/screenshots")


def shoot(page, name):
    """The page as it is now, as ``NAME-WxH.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.screenshot(path=str(SCREENSHOTS / f"{name}-{size['width']}x{size['height']}.png"))
