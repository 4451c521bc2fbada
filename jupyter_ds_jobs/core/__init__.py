"""jupyter_ds_jobs.core."""
