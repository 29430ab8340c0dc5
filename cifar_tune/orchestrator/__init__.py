"""Config schema, search space, Ray connection, Tuner construction and the CLI."""
