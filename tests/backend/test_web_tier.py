"""The web tier runs without torch: a process with Django set up, its URLs resolved and every
backend module (APIs, services, selectors, ...) imported has not loaded torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT


def test_web_process_never_loads_torch() -> None:
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import django
        django.setup()
        from django.urls import get_resolver
        import backend
        from backend.config.wsgi import application  # noqa: F401
        get_resolver().url_patterns  # imports every URLconf and API view
        imported = [m.name for m in pkgutil.walk_packages(backend.__path__, "backend.")
                    if ".migrations" not in m.name and ".settings." not in m.name]
        for name in imported:
            importlib.import_module(name)
        assert "backend.studies.services" in sys.modules and "backend.studies.api" in sys.modules
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
        print(len(imported), loaded[:5])
    """)
    env = {"DJANGO_SETTINGS_MODULE": "backend.config.settings.test", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    modules, loaded = result.stdout.split(" ", 1)
    assert int(modules) > 40
    assert loaded.strip() == "[]", f"the web process loaded {loaded.strip()}"
