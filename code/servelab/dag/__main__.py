"""``python -m servelab.dag --base-table [DIR]``: re-measure the stored base-size table."""

from servelab.dag.base_table import main

main()
