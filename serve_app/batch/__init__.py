"""Offline batch transcription with Ray Data: ``python -m serve_app.batch`` (``stt-batch``), see docs/batch.md.

job: the CLI and a run as plan -> execute -> summarise; pipeline: the Ray Data steps (decode, the transcriber
actor); rows: the row layout the actors emit and the driver writes; io: inputs and the output folder;
progress: what this run has done, on stderr.
"""
