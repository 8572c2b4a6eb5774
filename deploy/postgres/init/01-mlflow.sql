-- Run once by the postgres image on an empty data volume: the MLflow server's database beside Tastebud's.
CREATE DATABASE mlflow OWNER tastebud;
