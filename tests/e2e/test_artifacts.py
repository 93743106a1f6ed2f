"""A failing browser test leaves a screenshot behind (checked by running one in a child pytest)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ARTIFACTS, ROOT

pytestmark = pytest.mark.browser

INNER = textwrap.dedent(
    '''
    def test_inner_check_that_fails_on_purpose(page):
        page.set_content("<h1>Deliberate failure</h1>")
        assert page.locator("h1").inner_text() == "something else"
    '''
)


def test_a_failing_browser_test_saves_a_screenshot(tmp_path):
    inner = ROOT / "tests" / "e2e" / "_inner_failing_check.py"
    shot = ARTIFACTS / "test_inner_check_that_fails_on_purpose.png"
    shot.unlink(missing_ok=True)
    inner.write_text(INNER)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", str(inner), "-q", "-p", "no:cacheprovider", "--no-header"],
            cwd=ROOT, capture_output=True, text=True, timeout=180,
        )
    finally:
        inner.unlink(missing_ok=True)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "1 failed" in result.stdout
    assert shot.exists() and shot.stat().st_size > 1000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
