"""The job database: schema, sessions, migrations and every query. The single source of truth for job state."""
