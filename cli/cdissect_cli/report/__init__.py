"""The HTML report of a run: `write_report(run_dir) -> Path` (report.html + assets/)."""
from cdissect_cli.report.builder import write_report

__all__ = ["write_report"]
