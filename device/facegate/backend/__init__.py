"""The backend side of the contract: a device registry, a request client and a fleet-wide
result consumer with its store (SQLite or PostgreSQL). Imports the contract (messages,
signing, config) and nothing of the daemon. Needs the `backend` extra.

    from facegate.backend import BackendClient, load_config
    with BackendClient(load_config("backend.toml")) as client:
        result = client.verify("kiosk-7", open("id.jpg", "rb").read())

Names are imported on first use, so `facegate` itself runs without the extra.
"""
from importlib import import_module

_NAMES = {"BackendClient": "client", "DeviceNotTrusted": "client", "VerifiedResult": "client",
          "VerifyRejected": "client", "VerifyTimeout": "client", "ReferenceRefused": "client", "BackendConfig": "config", "load_config": "config",
          "Registry": "registry", "RegistryError": "registry", "Store": "store", "StoreError": "store",
          "Worker": "worker"}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(name)
    mod = import_module(f".{_NAMES[name]}", __name__)
    return getattr(mod, "load" if name == "load_config" else name)
