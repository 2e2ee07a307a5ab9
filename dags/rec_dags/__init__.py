"""What the DAG files of this folder share: defaults, asset names, and tasks built from the declared stages.

Imported by name (``rec_dags``) because Airflow puts the DAG folder on ``sys.path``; ``.airflowignore`` keeps
the DAG processor from parsing it as DAG files. Nothing heavy at import: DAG files are parsed often.
"""
