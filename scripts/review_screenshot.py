"""A screenshot of a review page with its most suspicious video opened (docs/img/review.png).

    python scripts/review_screenshot.py out/demo/run/score/report/index.html docs/img/review.png

Uses Debian's Chromium (``make browser-deps``) through Playwright, as the browser test does.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import CHROMIUM_ARGS  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("page", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1500, help="the top of the page this tall")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.page.resolve().as_uri())
        page.locator("#videos tbody.video button.open").first.click()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(args.png))
        browser.close()
    print(args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
