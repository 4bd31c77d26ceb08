"""Validation of the tools' JSON against docs/report.schema.json (issue 19)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "report.schema.json"


@cache
def _schema() -> dict:
    return json.loads(SCHEMA.read_text())


def validate(document: dict, kind: str) -> None:
    """Raise jsonschema.ValidationError unless `document` is a valid `kind` report
    (compile, simulate, bench or sweep) and a valid report at all."""
    import jsonschema

    schema = _schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(document, {**schema, "anyOf": [{"$ref": f"#/$defs/{kind}"}]})
    jsonschema.validate(document, schema)
