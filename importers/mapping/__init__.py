"""The mapping format: YAML resource mappings with column expressions (see
docs/importers.md and mapping.schema.json)."""

from importers.mapping.expressions import MappingError, RowIssue
from importers.mapping.model import Mapping, ResourceMapping, load_mapping, parse_mapping

__all__ = [
    "Mapping",
    "MappingError",
    "ResourceMapping",
    "RowIssue",
    "load_mapping",
    "parse_mapping",
]
