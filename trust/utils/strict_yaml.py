"""YAML read strictly: a key given twice in one mapping is an error naming its dotted path and lines.

PyYAML keeps the later value silently, so a repeated `finetune:` section would replace the
first one whole, and a repeated key would hide the value the user meant. Torch-free.
"""

from __future__ import annotations

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping holds the same key twice; the message names the dotted key and both lines."""


def _check(node: yaml.Node, path: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            where = f"{path}.{key}" if path else key
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(
                    f"{where}: given twice (lines {seen[key]} and {line}); YAML would silently keep only the "
                    "second" + (" section, dropping the first whole" if isinstance(value_node, yaml.MappingNode)
                                else " value") + ": merge them into one")
            seen[key] = line
            _check(value_node, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check(item, f"{path}.{i}" if path else str(i))


def load(text: str):
    """yaml.safe_load, refusing duplicate keys (DuplicateKeyError, a yaml.YAMLError)."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is not None:
        _check(node, "")
    return yaml.safe_load(text)
