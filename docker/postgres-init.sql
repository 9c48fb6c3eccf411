-- Run once by the postgres image on an empty data directory: the MLflow tracking server's database.
CREATE DATABASE mlflow OWNER airflow;
