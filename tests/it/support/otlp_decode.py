"""Decodes OTLP/HTTP request bodies with the official protobuf definitions (PyPI
`opentelemetry-proto`), as an OpenTelemetry Collector would: used by tests/it/ship/otlp.rs.

Arguments: files named `<n>.logs.pb` or `<n>.metrics.pb` (uncompressed protobuf bodies).
Prints one JSON line per file: {"file", "signal", "request"}, the request as protobuf's JSON
mapping with the original field names, trace and span IDs as hex. Exits 1 naming the file when a
body does not parse or holds a field the definitions do not know (a wrong field number).
"""
import base64
import json
import sys

from google.protobuf import json_format
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)


def unknown(msg, path="request"):
    """Paths of fields the definitions do not know, anywhere in msg."""
    out = []
    if len(UnknownFieldSet(msg)) > 0:
        out.append(path)
    for field, value in msg.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if not hasattr(value, "ListFields"):  # a repeated field (no maps in OTLP)
            for i, item in enumerate(value):
                out.extend(unknown(item, f"{path}.{field.name}[{i}]"))
        else:
            out.extend(unknown(value, f"{path}.{field.name}"))
    return out


def hex_ids(obj):
    if isinstance(obj, dict):
        for key in ("trace_id", "span_id"):
            if key in obj and isinstance(obj[key], str):
                obj[key] = base64.b64decode(obj[key]).hex()
        for v in obj.values():
            hex_ids(v)
    elif isinstance(obj, list):
        for v in obj:
            hex_ids(v)


def main():
    for name in sys.argv[1:]:
        signal = "metrics" if name.endswith(".metrics.pb") else "logs"
        msg = ExportMetricsServiceRequest() if signal == "metrics" else ExportLogsServiceRequest()
        with open(name, "rb") as f:
            body = f.read()
        try:
            msg.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any parse failure fails the test
            print(f"{name}: does not parse as {type(msg).__name__}: {e}", file=sys.stderr)
            sys.exit(1)
        bad = unknown(msg)
        if bad:
            print(f"{name}: unknown fields at {bad[:5]}", file=sys.stderr)
            sys.exit(1)
        request = json_format.MessageToDict(msg, preserving_proto_field_name=True)
        hex_ids(request)
        print(json.dumps({"file": name, "signal": signal, "request": request}))


if __name__ == "__main__":
    main()
