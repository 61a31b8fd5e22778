"""MLflow adapter: the system of record for unit models, rankings and champions."""
