"""The domain package stays free of the frameworks (STYLE.md: imports flow one way)."""

import pkgutil
import subprocess
import sys

import marketdata

FRAMEWORKS = ("dagster", "pyspark", "bytewax", "redis")


def test_domain_imports_no_framework() -> None:
    modules = [f"marketdata.{m.name}" for m in pkgutil.iter_modules(marketdata.__path__)]
    assert len(modules) >= 8
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})\n"
        + "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_check_would_notice_a_framework() -> None:
    code = "import sys, redis\nprint('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
