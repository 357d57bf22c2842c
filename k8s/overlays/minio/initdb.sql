-- Run once, on the first start of an empty data volume, as POSTGRES_USER (who then owns it).
-- MLflow's authentication store lives apart from the tracking store (see basic_auth.ini).
CREATE DATABASE mlflow_auth;
