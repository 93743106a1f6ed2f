from __future__ import annotations

import re

from django.core.management import call_command
from django.test import override_settings


def test_collectstatic_points_module_imports_at_the_hashed_files(tmp_path):
    storages = {"staticfiles": {"BACKEND": "kwala_site.storage.StaticFilesStorage"}}
    with override_settings(STATIC_ROOT=tmp_path, STORAGES=storages):
        call_command("collectstatic", interactive=False, verbosity=0)
    editor = next((tmp_path / "js").glob("editor.*.js"))
    imported = re.search(r'from "\./(canvas[^"]*)"', editor.read_text()).group(1)
    assert re.fullmatch(r"canvas\.[0-9a-f]{12}\.js", imported)
    assert (tmp_path / "js" / imported).exists()
