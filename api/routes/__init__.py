"""Route modules: jobs (the job API) and health (liveness, readiness, metrics)."""
