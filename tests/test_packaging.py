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


def test_every_models_data_folder_is_listed_so_setuptools_does_not_warn():
    """A data folder under the package facegate.models that is not itself listed made
    setuptools print ~150 lines of 'Package would be ignored' warnings before
    `scripts/dev.sh demo` and every install (facegate.models.converted, .kat, .samples)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    models = REPO / setuptools["package-dir"]["facegate.models"]
    folders = {"facegate.models." + ".".join(p.relative_to(models).parts) for p in models.rglob("*")
               if p.is_dir() and p.name != "__pycache__" and any(f.is_file() for f in p.iterdir())}
    assert folders - set(setuptools["packages"]) == set()
    data = setuptools["package-data"]
    assert all(data.get(f) for f in folders), "each needs its package-data patterns"
