"""The API's routes, one router per resource: health (no token), jobs, batches and aggregates."""
