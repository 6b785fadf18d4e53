"""``python -m tests.e2e.fakesnow_serve serve ...``: the gateway's CLI with Snowflake faked in the
process by fakesnow (Snowflake SQL on DuckDB), so a whole gateway process runs its Snowflake memory
store, connection pool included, with no Snowflake account."""

from __future__ import annotations

import sys

from gateway.cli import main
from tests import fakesnow_support

if __name__ == "__main__":
    with fakesnow_support.patch():
        code = main()
    sys.exit(code)
