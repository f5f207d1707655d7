"""YAML as researchers write it: 1.2 floats (``1e-3`` is a number) and a key given twice named with its line.

Imports nothing of rl_core: the grid loader, the workflow and the config share it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class YamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats: PyYAML (YAML 1.1) reads `1e-3` as a string, researchers write it."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


class DuplicateKeyError(yaml.YAMLError):
    """A key given twice in one YAML mapping (PyYAML would silently keep the last one)."""

    def __init__(self, key: Any, line: int, first_line: int):
        self.key, self.line, self.first_line = key, line, first_line
        super().__init__(f"line {line}: duplicate key '{key}' (first given on line {first_line})")


class StrictYamlLoader(YamlLoader):
    """YamlLoader that refuses a key given twice in one mapping, naming the line of each.

    A ``<<`` merge key may still bring keys that the mapping then overrides (that is what merges are for).
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, line, seen[key])
                    seen[key] = line
                except TypeError:  # an unhashable key: the base class reports it
                    continue
        return super().construct_mapping(node, deep)


def yaml_load(text: str):
    """YAML 1.2 floats; a duplicate key raises DuplicateKeyError (a yaml.YAMLError) naming its line."""
    return yaml.load(text, Loader=StrictYamlLoader)
