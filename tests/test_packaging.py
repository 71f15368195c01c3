"""The wheel holds every package of the source tree: pyproject.toml lists them by hand (the
models/ folder is mapped to facegate.models), so a new subpackage must be added there, or an
installed terminal fails at its first import (as `facegate.backend` did: every `facegate`
command of the installed package raised ModuleNotFoundError)."""
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_under_device_is_listed_for_the_wheel():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    device = REPO / setuptools["package-dir"][""]
    found = {".".join(p.parent.relative_to(device).parts) for p in device.rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert (REPO / setuptools["package-dir"]["facegate.models"] / "__init__.py").is_file()
