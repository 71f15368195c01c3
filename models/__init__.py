"""facegate.models: the model manifest and the project's own converted models, shipped
as package data (pyproject maps this folder to the package `facegate.models`). Read only
through `facegate.modelstore.resource(...)` (importlib.resources), never by a path into
a source tree, so that an installed wheel and an editable checkout behave alike."""
