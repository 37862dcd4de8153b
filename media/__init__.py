"""Media work with PyAV (FFmpeg's libraries in-process): probing, transcoding, extracting,
merging and thumbnails. Functions here are synchronous and CPU-bound; callers run them in a
thread (probing) or a worker process (jobs)."""
