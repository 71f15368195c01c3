"""Adapters: the only modules that import hardware or runtime libraries."""
