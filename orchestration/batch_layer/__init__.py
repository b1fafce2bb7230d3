"""The batch layer in Dagster: daily partitions, the day's assets, its schedule and sensor."""
