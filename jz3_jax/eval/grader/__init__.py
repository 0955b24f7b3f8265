"""Reading and comparing answers: extraction, cleaning, structured equivalence, the `strict` and
`paper` policies, and the worker processes that run them with a timeout (see `eval/grading.py`)."""
