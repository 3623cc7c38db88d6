"""The browser the page tests use runs here: it renders a page and takes clicks and keys."""

from __future__ import annotations


def test_headless_chromium_renders_and_takes_input(page):
    page.set_content("<p id=out>0</p><button onclick=\"out.textContent = +out.textContent + 1\">add</button>"
                     "<script>document.addEventListener('keydown', e => { if (e.key === '1') out.textContent = 'one' })"
                     "</script>")
    page.click("button")
    page.click("button")
    assert page.text_content("#out") == "2"
    page.keyboard.press("1")
    assert page.text_content("#out") == "one"
