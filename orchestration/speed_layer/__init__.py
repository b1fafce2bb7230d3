"""The speed layer in Dagster: the raw log and the flows as assets, their jobs and sensor."""
