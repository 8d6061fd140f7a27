"""A format family whose optional dependencies are not installed: its schema files are still
recognized by their suffix, so a policy in that format fails start-up naming the extra to install,
instead of being skipped (its raw topic would then go unread without a word)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from gateway.core.codec.encoding import Encoding, SchemaFormat
from gateway.core.codec.raw import SchemaFile
from gateway.errors import PolicyError


class MissingExtra:
    """Stands in the registry for a family that needs `extra` (`pip install 'privacy-gateway[<extra>]'`)."""

    def __init__(self, schema_format: SchemaFormat, suffixes: tuple[str, ...], registry_type: str,
                 encoding: Encoding, extra: str, missing: str) -> None:
        self.format = schema_format
        self.suffixes = suffixes
        self.registry_type = registry_type
        self.encoding = encoding
        self.extra = extra
        self.missing = missing  # the module that failed to import

    def _refuse(self, where: Path | str) -> NoReturn:
        raise PolicyError(f"{where}: {self.format} schemas need the '{self.extra}' extra (module '{self.missing}' "
                          f"is not installed): pip install 'privacy-gateway[{self.extra}]'")

    def load(self, path: Path) -> SchemaFile:
        self._refuse(path)

    def decoder(self, schema: SchemaFile, *args: Any) -> Any:
        self._refuse(schema.path)

    def same_schema(self, schema: SchemaFile, registered: str) -> bool:
        self._refuse(schema.path)

    def writer(self, schema: SchemaFile, registered: str, label: str) -> Any:
        self._refuse(schema.path)

    def sanitized_schema(self, schema: SchemaFile, sanitized: dict[str, Any]) -> str:
        self._refuse(schema.path)

    def sanitized_problems(self, text: str, previous: Sequence[tuple[str, str]], compatibility: str) -> list[str]:
        self._refuse("the sanitized schema")

    def encoder(self, schema: SchemaFile, sanitized: dict[str, Any]) -> Callable[[dict[str, Any]], bytes]:
        self._refuse(schema.path)

    def reader(self, schema: SchemaFile, sanitized: dict[str, Any]) -> Callable[[bytes], dict[str, Any]]:
        self._refuse(schema.path)
