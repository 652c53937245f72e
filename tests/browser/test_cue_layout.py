"""The cue pages' big words fit their boxes at every window size.

A cut-off "STANDB" on stage is a cue nobody can read. Each indicator of the
receiver and each cue button of the sender is measured in Chromium at phone,
tablet, laptop and wall-screen sizes: its text (a Range around its contents)
must lie inside its box, on one line for the indicators, the box must lie
inside the stage that clips it, and the text must stay big.
"""
import pytest
from playwright.sync_api import expect

from tests.browser.screens import VIEWPORTS, shoot

pytestmark = pytest.mark.browser

WIDTHS = (360, 390, 768, 1024, 1280, 1440, 1920, 2560)
HEIGHTS = (640, 1080)

# Shows each element of `selector` alone (as the page does for a cue), and
# measures its text against its box and the box against `clip`.
MEASURE = """([selector, clip, alone]) => {
  const boxes = Array.from(document.querySelectorAll(selector));
  const wasHidden = boxes.map((box) => box.hidden);
  const found = [];
  for (const box of boxes) {
    if (alone) for (const other of boxes) other.hidden = other !== box;
    const range = document.createRange();
    range.selectNodeContents(box);
    const text = range.getBoundingClientRect();
    const outer = box.getBoundingClientRect();
    const clipper = box.closest(clip).getBoundingClientRect();
    const style = getComputedStyle(box);
    found.push({
      name: box.textContent.trim(),
      textLeft: text.left, textRight: text.right, textWidth: text.width, textHeight: text.height,
      boxLeft: outer.left, boxRight: outer.right, clientWidth: box.clientWidth,
      clipLeft: clipper.left, clipRight: clipper.right,
      fontSize: parseFloat(style.fontSize),
    });
  }
  boxes.forEach((box, i) => { box.hidden = wasHidden[i]; });
  return found;
}"""

# Sub-pixel rounding of text boxes.
EPSILON = 0.5


def misfits(page, selector, clip, alone, min_font, one_line):
    """What is wrong at each window size, as readable lines (empty: all fits)."""
    problems = []
    for width in WIDTHS:
        for height in HEIGHTS:
            page.set_viewport_size({"width": width, "height": height})
            for box in page.evaluate(MEASURE, [selector, clip, alone]):
                where = f"{width}x{height} {box['name']!r}"
                if box["textWidth"] > box["clientWidth"] + EPSILON or (
                    box["textLeft"] < box["boxLeft"] - EPSILON or box["textRight"] > box["boxRight"] + EPSILON
                ):
                    problems.append(
                        f"{where}: text {box['textWidth']:.0f} px wide in a {box['clientWidth']} px box"
                        f" (text {box['textLeft']:.0f}..{box['textRight']:.0f}, box {box['boxLeft']:.0f}..{box['boxRight']:.0f})"
                    )
                if box["boxLeft"] < box["clipLeft"] - EPSILON or box["boxRight"] > box["clipRight"] + EPSILON:
                    problems.append(
                        f"{where}: box {box['boxLeft']:.0f}..{box['boxRight']:.0f} is cut by its container"
                        f" {box['clipLeft']:.0f}..{box['clipRight']:.0f}"
                    )
                if one_line and box["textHeight"] > 1.5 * box["fontSize"]:
                    problems.append(f"{where}: wraps onto {box['textHeight'] / box['fontSize']:.1f} lines")
                smallest = min_font(box)
                if box["fontSize"] < smallest:
                    problems.append(f"{where}: font {box['fontSize']:.0f} px, less than {smallest:.0f} px")
    return problems


def test_every_receiver_indicator_fits_its_box_at_every_window_size(server, machines):
    page = machines("stage").page
    page.goto(f"{server.http}/receive")
    # Big: at least 8 % of the box's width (the old design was 10-25 %).
    problems = misfits(
        page, ".cue[data-cue]", ".stage", alone=True, one_line=True,
        min_font=lambda box: 0.08 * box["clientWidth"],
    )
    assert problems == []


def test_every_sender_cue_button_label_fits_its_button_at_every_window_size(server, machines):
    page = machines("stage manager").page
    page.goto(f"{server.http}/send")
    # The word and its key hint on one line (the R once dropped below RESET on
    # a phone), readable from arm's length: 24 px at least, and 5 % of the button's width.
    problems = misfits(
        page, ".cue-button", ".buttons", alone=False, one_line=True,
        min_font=lambda box: max(24, 0.05 * box["clientWidth"]),
    )
    assert problems == []


# --- the whole page at the window sizes of tests/browser/screens.py ------------------

# Boxes of the page's parts, the window, and how far the page scrolls.
BOXES = """(selectors) => {
  const found = {};
  for (const selector of selectors) {
    const box = document.querySelector(selector).getBoundingClientRect();
    found[selector] = {top: box.top, bottom: box.bottom, left: box.left, right: box.right};
  }
  return {boxes: found, width: window.innerWidth, height: window.innerHeight,
          scrollWidth: document.documentElement.scrollWidth, scrollHeight: document.documentElement.scrollHeight};
}"""


def outside(measured, selectors):
    """The parts among ``selectors`` that are not wholly inside the window."""
    return {
        selector: box for selector, box in measured["boxes"].items() if selector in selectors and (
            box["top"] < -EPSILON or box["left"] < -EPSILON
            or box["bottom"] > measured["height"] + EPSILON or box["right"] > measured["width"] + EPSILON
        )
    }


def test_the_receiver_fits_its_window_with_a_long_log(server, machines):
    page = machines("stage").page
    page.goto(f"{server.http}/receive")
    page.wait_for_function("() => document.getElementById('share-qr').naturalWidth > 0")
    # An evening's log: it scrolls in its own box, it does not lengthen the page.
    page.evaluate("() => { for (let i = 0; i < 60; i++) Cue.log(document.getElementById('log'), 'Cue: Go ' + i, 'cue'); }")
    problems = []
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        parts = [".topbar", ".stage", ".cue:not([hidden])", ".identity", ".messenger"]
        measured = page.evaluate(BOXES, parts)
        # The stage and its cue on screen at every size; from 1024 px the whole
        # page is one screen (on a phone the side column follows the stage).
        whole = parts if width >= 1024 else [".topbar", ".stage", ".cue:not([hidden])"]
        if outside(measured, whole):
            problems.append((f"{width}x{height}", outside(measured, whole)))
        if measured["scrollWidth"] > width or (width >= 1024 and measured["scrollHeight"] > height):
            problems.append((f"{width}x{height}", "page", measured["scrollWidth"], measured["scrollHeight"]))
        shoot(page, "receiver")
    assert problems == []


# Per group of an id: the number of lines its characters lie on.
GROUP_LINES = """(selector) => {
  const element = document.querySelector(selector);
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  const chars = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    for (let i = 0; i < node.data.length; i++) chars.push([node, i]);
  }
  const text = chars.map(([node, i]) => node.data[i]).join("");
  const lines = [];
  let start = 0;
  for (const group of text.split("-")) {
    const range = document.createRange();
    const [first, last] = [chars[start], chars[start + group.length - 1]];
    range.setStart(first[0], first[1]);
    range.setEnd(last[0], last[1] + 1);
    lines.push(new Set(Array.from(range.getClientRects(), (r) => Math.round(r.top))).size);
    start += group.length + 1;
  }
  return {text, lines};
}"""

# The placeholder's width in the input's font, against the room the input gives it.
PLACEHOLDER = """(selector) => {
  const input = document.querySelector(selector);
  const style = getComputedStyle(input);
  const context = document.createElement("canvas").getContext("2d");
  context.font = style.font;
  const room = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  return {text: context.measureText(input.placeholder).width, room};
}"""

# Per cue button: the lines its word and key hint lie on.
BUTTON_LINES = """() => Array.from(document.querySelectorAll(".cue-button"), (button) => {
  const range = document.createRange();
  range.selectNodeContents(button);
  const rects = Array.from(range.getClientRects());
  return [button.textContent.trim(), Math.max(...rects.map((r) => r.top)) < Math.min(...rects.map((r) => r.bottom))];
})"""


def test_the_sender_keeps_ids_cue_keys_and_its_placeholder_whole(server, machines):
    page = machines("stage manager").page
    page.goto(f"{server.http}/send")
    expect(page.locator("#status")).to_contain_text("Ready. Your ID: ")
    receiver_id = "9c7e2a41-0b3d-4f6e-8a15-d2c4b7e9f013"  # nobody holds it: the row shows it all the same
    page.fill("#receiver-id", receiver_id)
    page.click("#connect")
    expect(page.locator(".receiver-name")).to_have_text(receiver_id)
    problems = []
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        where = f"{width}x{height}"
        groups = page.evaluate(GROUP_LINES, ".receiver-name")
        if groups["text"] != receiver_id or any(n != 1 for n in groups["lines"]):
            problems.append((where, "id", groups))
        placeholder = page.evaluate(PLACEHOLDER, "#receiver-id")
        if placeholder["text"] > placeholder["room"]:
            problems.append((where, "placeholder", placeholder))
        for label, one_line in page.evaluate(BUTTON_LINES):
            if not one_line:
                problems.append((where, "cue button on two lines", label))
        if page.evaluate("document.documentElement.scrollWidth") > width:
            problems.append((where, "wider than the window"))
        shoot(page, "sender")
    assert problems == []
