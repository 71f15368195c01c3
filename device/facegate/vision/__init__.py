"""Pure pre/post-processing and the model classes (each receives a Runner)."""
