"""Database access: the schema, the engine factory and migrations."""
