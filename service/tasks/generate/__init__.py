"""The language-model room: spec, params, forms, settings, engine (step model + scheduler), metrics, OpenAPI, app."""
