"""The `pipeline` stage: the whole recipe in one run directory (see `stage.py`), its report
(`report.py`) and the data the demo and the tiny config ship with (`assets.py`)."""
