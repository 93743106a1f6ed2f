"""How collectstatic stores the static files in a deployment."""

from __future__ import annotations

from django.contrib.staticfiles.storage import ManifestStaticFilesStorage
from whitenoise.storage import CompressedManifestStaticFilesStorage

# Django's rewriting of `import ... from "./x.js"` (support_js_module_import_aggregation),
# applied to our own modules only: some vendored packages' files import paths that do not
# exist as files (django_htmx's extensions), which stops collectstatic.
_JS_MODULE_IMPORTS = ManifestStaticFilesStorage._js_module_import_aggregation_patterns[1]


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Whitenoise's compressed, hashed files, with static/js/ module imports hashed too.

    editor.js and run.js import ./canvas.js: left as is, the browser fetched the unhashed
    canvas.js only once editor.js had arrived, although the page had already preloaded the
    hashed one (a second request on the way to the first drawn canvas, see
    bench/editor_load.py).
    """

    patterns = (*CompressedManifestStaticFilesStorage.patterns, ("js/*.js", _JS_MODULE_IMPORTS))
