"""What a catalogue slug may be, in a module of its own: the status API validates slugs in
its paths and queries without importing the catalogue (its models, the ORM, brands)."""

SLUG_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,199}$"
