"""jupyter_ds_jobs.server."""
