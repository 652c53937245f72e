"""The cue pages' big words fit their boxes at every window size.

A cut-off "STANDB" on stage is a cue nobody can read. Each indicator of the
receiver and each cue button of the sender is measured in Chromium at phone,
tablet, laptop and wall-screen sizes: its text (a Range around its contents)
must lie inside its box, on one line for the indicators, the box must lie
inside the stage that clips it, and the text must stay big.
"""
import pytest

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
    # The key hint may wrap under the word; the word itself must be whole and
    # readable from arm's length: 24 px at least, and 5 % of the button's width.
    problems = misfits(
        page, ".cue-button", ".buttons", alone=False, one_line=False,
        min_font=lambda box: max(24, 0.05 * box["clientWidth"]),
    )
    assert problems == []
