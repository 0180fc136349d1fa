"""The classification room: spec, schema, engine (and its CUDA shapes), metrics, feedback, OpenAPI, V2, app."""
