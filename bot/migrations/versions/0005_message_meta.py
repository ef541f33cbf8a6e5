"""messages carry their answer's citations, tool calls and error (the console shows them)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 01:00:00
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('meta', sa.Text(), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('meta')
