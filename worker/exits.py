"""Exit statuses of a worker process that its supervisor (`python -m worker`) acts on. Kept apart from
worker/runs.py, which loads sr and torch: the supervisor never does."""

# A worker whose watchdog ended a stuck run (worker/runs.py keep_lease): the supervisor restarts it.
EXIT_STUCK_RUN = 75
EXIT_DEVICE_FAILED = 3  # a gpu-queue worker whose warm-up job failed (its device, or the overrides)
