"""A test app shaped like SODAR: projects in `projectroles_project`, keyed by `sodar_uuid`."""
