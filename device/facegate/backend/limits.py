"""The bounds a terminal-supplied field must keep: they live in the contract room
(contract/limits.py), beside the typed messages they check; this name stays for the
backend's modules and tests."""
from ..contract.limits import (
                               INT63,
                               MAX_DEPTH,
                               MAX_HEALTH_BYTES,
                               MAX_NODES,
                               MAX_TEXT,
                               QUARANTINE_KEEP_BYTES,
                               int63,
                               json_depth,
                               number,
                               opt_text,
                               parse_json_map,
                               text,
                               tree_problem,
)

__all__ = ["INT63", "MAX_DEPTH", "MAX_HEALTH_BYTES", "MAX_NODES", "MAX_TEXT", "QUARANTINE_KEEP_BYTES", "int63",
           "json_depth", "number", "opt_text", "parse_json_map", "text", "tree_problem"]
