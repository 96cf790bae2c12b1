"""A test app whose projects are keyed by integer: `project.id`."""
