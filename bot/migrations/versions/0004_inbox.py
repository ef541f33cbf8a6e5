"""the durable inbox; outbox entries carry their send context and inbox entry

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:41:58.110611
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('inbox_entry',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('message_id', sa.String(length=255), nullable=False),
    sa.Column('conversation_id', sa.String(length=512), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('context', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=64), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), server_default='', nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('channel', 'tenant', 'message_id', name='uq_inbox_entry')
    )
    with op.batch_alter_table('inbox_entry', schema=None) as batch_op:
        batch_op.create_index('ix_inbox_entry_conversation_id_id', ['conversation_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbox_entry_created_at'), ['created_at'], unique=False)
        batch_op.create_index('ix_inbox_entry_status_id', ['status', 'id'], unique=False)

    with op.batch_alter_table('outbox_entry', schema=None) as batch_op:
        batch_op.add_column(sa.Column('context', sa.Text(), server_default='{}', nullable=False))
        batch_op.add_column(sa.Column('inbox_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_outbox_entry_inbox_id'), ['inbox_id'], unique=False)




def downgrade() -> None:
    
    with op.batch_alter_table('outbox_entry', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_entry_inbox_id'))
        batch_op.drop_column('inbox_id')
        batch_op.drop_column('context')

    with op.batch_alter_table('inbox_entry', schema=None) as batch_op:
        batch_op.drop_index('ix_inbox_entry_status_id')
        batch_op.drop_index(batch_op.f('ix_inbox_entry_created_at'))
        batch_op.drop_index('ix_inbox_entry_conversation_id_id')

    op.drop_table('inbox_entry')

