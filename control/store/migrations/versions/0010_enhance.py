"""what a job measured besides its files

Revision ID: 0010_enhance
Revises: 0009_captions
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_enhance"
down_revision = "0009_captions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("result", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("result")
