"""jupyter_ds_jobs.packaging."""
