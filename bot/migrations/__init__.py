"""Alembic migrations of Knowbot's database; they run at start-up."""
