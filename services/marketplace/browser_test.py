"""The marketplace in headless Chromium (Debian's `chromium`, driven by Playwright): what a shopper sees.

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it), hence the `manual` tag:
`./bazelw test //services/marketplace:browser_test`. Screenshots go to the test's undeclared outputs
(bazel-testlogs/services/marketplace/browser_test/test.outputs/outputs.zip).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from libs.processes.processes import ChildProcess, free_ports, runfile

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# Flags for a closed network and no desktop session: nothing phones home, no GPU, no setuid sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    rec_port, web_port = free_ports(2)
    recommendations = ChildProcess(
        "recommendations",
        [runfile("services/recommendations/recommendations"), "--insecure", "--host", "127.0.0.1", "--port", rec_port],
    ).start()
    marketplace = ChildProcess(
        "marketplace",
        [
            runfile("services/marketplace/marketplace"), "--insecure", "--host", "127.0.0.1", "--port", web_port,
            "--recommendations-addr", f"127.0.0.1:{rec_port}",
        ],
    ).start()  # fmt: skip
    try:
        recommendations.wait_for_port(rec_port)
        marketplace.wait_for_port(web_port)
        yield f"http://127.0.0.1:{web_port}"
    finally:
        marketplace.stop()
        recommendations.stop()


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: apt-get install chromium (or set CHROMIUM)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1000, "height": 1400})
        browser.close()


def screenshot(page: Page, name: str) -> None:
    outputs = Path(os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR", "/tmp"))
    page.screenshot(path=str(outputs / name), full_page=True)


def test_home_page_shows_books_of_every_category(site: str, page: Page) -> None:
    page.goto(site + "/")
    expect(page).to_have_title("Online Books For You")
    expect(page.get_by_role("heading", name="Mystery books you may like", level=1)).to_be_visible()
    mystery = page.locator("section", has=page.locator("#mystery-heading"))
    titles = mystery.locator("cite").all_inner_texts()
    assert len(titles) == 3
    assert all(title.strip() for title in titles)
    assert page.locator("section.category").count() == 6
    expect(page.locator(".notice")).to_have_count(0)
    screenshot(page, "home.png")


def test_category_page_from_the_navigation(site: str, page: Page) -> None:
    page.goto(site + "/")
    page.get_by_role("navigation", name="Categories").get_by_role("link", name="Science fiction").click()
    expect(page).to_have_url(site + "/category/science-fiction")
    expect(page.get_by_role("heading", name="Science fiction books you may like", level=1)).to_be_visible()
    titles = page.locator("ul.books cite").all_inner_texts()
    assert len(titles) == 10
    assert len(set(titles)) == 10
    authors = page.locator("ul.books .author").all_inner_texts()
    assert all(author.startswith("by ") for author in authors)
    screenshot(page, "category.png")


def test_unknown_category_is_a_friendly_page(site: str, page: Page) -> None:
    response = page.goto(site + "/category/poetry")
    assert response is not None
    assert response.status == 404
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    expect(page.get_by_role("link", name="Back to the home page")).to_be_visible()
